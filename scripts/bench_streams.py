"""N streams through one Engine (batch N per call) against N separate processes (batch 1 each).

    PYTHONPATH=. python scripts/bench_streams.py --streams 1 2 4 8 --width 640 --height 360 --frames 40

Every stream is the demo clip at its own offset, so the batch holds different content. ``batched``: one
process, one ``Engine.step`` over all N streams per tick: total frames/s and the p95 of the step time (the
latency each stream's frame sees). ``separate``: N processes started together, each with its own Engine
and ``max(1, cores // N)`` threads (the best split for them), one frame per call: total frames/s over the
wall time from the common start to the last finish, and the p95 over every process's step times. The model
only (upload + network + state), not capture or sinks: that is the pipeline benchmark's job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from rvm_live.bench import bench_frames
from rvm_live.engine import Engine


def streams_frames(n: int, width: int, height: int, frames: int) -> list[list[np.ndarray]]:
    clip = bench_frames(width, height, 120)
    return [[clip[(s * 37 + t) % len(clip)] for t in range(frames)] for s in range(n)]


def run_batched(engine: Engine, frames: list[list[np.ndarray]], warmup: int) -> list[float]:
    states = [engine.new_state() for _ in frames]
    times = []
    for t in range(len(frames[0])):
        start = time.perf_counter()
        out = engine.step([f[t] for f in frames], states)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del out
    return times[warmup:]


def worker(args: argparse.Namespace) -> None:
    """One of the separate processes: waits for the common start, steps its stream, prints its timings."""
    torch.set_num_threads(args.threads)
    engine = Engine(engine=args.engine, device=args.device)
    frames = streams_frames(args.index + 1, args.width, args.height, args.frames)[args.index]
    run_batched(engine, [frames[: args.warmup]], 0)
    while time.time() < args.start_at:
        time.sleep(0.005)
    begin = time.time()
    times = run_batched(engine, [frames], 0)
    print(json.dumps({"begin": begin, "end": time.time(), "times": times}))


def run_separate(args: argparse.Namespace, n: int) -> dict[str, float]:
    threads = max(1, (os.cpu_count() or 1) // n)
    start_at = time.time() + 8.0 + 2.0 * n  # every child has loaded its model by then
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--index", str(i), "--threads", str(threads),
                               "--start-at", str(start_at), "--engine", args.engine, "--device", args.device,
                               "--width", str(args.width), "--height", str(args.height),
                               "--frames", str(args.frames), "--warmup", str(args.warmup)],
                              stdout=subprocess.PIPE, text=True) for i in range(n)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["end"] for r in results) - min(r["begin"] for r in results)
    times = np.concatenate([r["times"] for r in results]) * 1000
    return {"fps_total": round(n * args.frames / wall, 2), "p95_ms": round(float(np.percentile(times, 95)), 1),
            "threads_each": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--frames", type=int, default=40, help="timed frames per stream")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--engine", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    engine = Engine(engine=args.engine, device=args.device)
    rows = []
    for n in args.streams:
        frames = streams_frames(n, args.width, args.height, args.frames + args.warmup)
        times = np.asarray(run_batched(engine, frames, args.warmup)) * 1000
        batched = {"fps_total": round(n * len(times) / (times.sum() / 1000), 2),
                   "p95_ms": round(float(np.percentile(times, 95)), 1)}
        separate = run_separate(args, n)
        rows.append({"streams": n, "batched": batched, "separate": separate,
                     "ratio": round(batched["fps_total"] / separate["fps_total"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
