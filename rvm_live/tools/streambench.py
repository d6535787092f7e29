"""``rvm-live bench --streams 1,2,4,8``: several live streams through one daemon (one engine, streams of one
size batched into one network call) against the same streams in as many separate processes.

Every stream plays the demo clip, scaled to ``W x H``, ``--realtime --loop`` into a null output for
``--seconds``. Reported per N and per layout: total frames out per second (the sum of the streams' steady
rates), the worst stream's p95 capture → output latency, and for the daemon the mean batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP_S = 3.0


def _daemon_run(clip: Path, n: int, seconds: float, config_extra: dict[str, Any]) -> dict[str, Any]:
    from ..config import Config
    from ..runtime.daemon import Daemon

    streams = tuple({"id": f"s{i}", "source": str(clip), "realtime": True, "loop": True, "outputs": ["null"]}
                    for i in range(n))
    daemon = Daemon(Config(streams=streams, log_level="warning", **config_extra))
    daemon.start()
    try:
        time.sleep(WARMUP_S)
        before = {s: v["frames_out"] for s, v in daemon.stats()["streams"].items()} if n > 1 else None
        first = daemon.stats()
        start = time.monotonic()
        daemon.wait(timeout=seconds)
        stats = daemon.stats()
        elapsed = time.monotonic() - start
    finally:
        daemon.stop()
        daemon.wait(10)
        daemon.close()
    if before is None:
        total = (stats["frames_out"] - first["frames_out"]) / elapsed
    else:
        total = sum(v["frames_out"] - before[s] for s, v in stats["streams"].items()) / elapsed
    return {"total_fps": round(total, 2), "p95_ms": stats["latency_ms"]["p95"],
            "mean_batch": stats.get("mean_batch", 1.0)}


def _processes_run(clip: Path, n: int, seconds: float, config_extra: dict[str, Any], tmp: Path) -> dict[str, Any]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in config_extra.items()]
    procs, paths = [], []
    for i in range(n):
        stats_path = tmp / f"proc{i}.json"
        paths.append(stats_path)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rvm_live", "--source", str(clip), "--realtime", "--loop", "-o", "null",
             "--quiet", "--log-level", "warning", "--stats-json", str(stats_path), *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(WARMUP_S + seconds)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    runs = [json.loads(path.read_text()) for path in paths if path.exists()]
    # each process's own fps_out spans its first to last output frame: model loading is not counted
    return {"total_fps": round(sum(r["fps_out"] for r in runs), 2),
            "p95_ms": max((r["latency_ms"]["p95"] or 0 for r in runs), default=None), "processes_ok": len(runs)}


def run_stream_bench(counts: list[int], *, width: int = 640, height: int = 360, fps: float = 30.0,
                     seconds: float = 15.0, separate: bool = True, engine: str = "auto",
                     fullres: str = "exact", quality: str = "fixed", device: str = "cpu") -> dict[str, Any]:
    """The table: for each N, the daemon with N streams, and (``separate``) N processes with one each."""
    from .common import bench_frames, encode_clip, machine_info

    extra = {"engine": engine, "fullres": fullres, "quality": quality, "device": device}
    rows = []
    with tempfile.TemporaryDirectory(prefix="rvm-live-streambench-") as tmp_name:
        tmp = Path(tmp_name)
        clip = encode_clip(bench_frames(width, height, 120), tmp / "clip.mp4", fps=round(fps))
        for n in counts:
            row: dict[str, Any] = {"streams": n, "daemon": _daemon_run(clip, n, seconds, extra)}
            if separate:
                row["processes"] = _processes_run(clip, n, seconds, extra, tmp)
                d, p = row["daemon"]["total_fps"], row["processes"]["total_fps"]
                row["throughput_ratio"] = round(d / p, 2) if p else None
            rows.append(row)
    return {"machine": machine_info(), "load_average_1min": round(os.getloadavg()[0], 2),
            "settings": {"width": width, "height": height, "fps": fps, "seconds": seconds, **extra}, "rows": rows}


def format_stream_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"rvm-live bench --streams: {s['width']}x{s['height']}@{s['fps']:g}, {s['seconds']:g} s each, engine "
             f"{s['engine']}, fullres {s['fullres']}, quality {s['quality']}; load average "
             f"{report['load_average_1min']}",
             "| streams | one daemon: total fps | p95 ms | mean batch | N processes: total fps | p95 ms | ratio |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        d, p = row["daemon"], row.get("processes") or {}
        lines.append(f"| {row['streams']} | {d['total_fps']} | {d['p95_ms']} | {d['mean_batch']} | "
                     f"{p.get('total_fps', '-')} | {p.get('p95_ms', '-')} | {row.get('throughput_ratio', '-')} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """``rvm-live bench --streams``'s flags."""
    parser = argparse.ArgumentParser(prog="rvm-live bench --streams")
    parser.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-separate", dest="separate", action="store_false", help="skip the N-process runs")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--fullres", default="exact")
    parser.add_argument("--quality", default="fixed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--json", metavar="PATH", help="also write the report here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = [int(c) for c in args.streams.split(",") if c.strip()]
    report = run_stream_bench(counts, width=args.width, height=args.height, fps=args.fps, seconds=args.seconds,
                              separate=args.separate, engine=args.engine, fullres=args.fullres,
                              quality=args.quality, device=args.device)
    print(format_stream_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
