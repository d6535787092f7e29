"""``rvm-live bench``: how fast the model and the whole pipeline run on this machine.

Three measurements on real frames (the demo clip resized to the requested size, looped):

- **model**: ``Matter.step`` one frame at a time (uint8 upload + network, recurrent state carried), after a
  warm-up; throughput and per-frame latency.
- **onnxruntime** (CPU, MobileNetV3): the official ONNX export on the same frames with the same thread count,
  also one frame at a time with the state carried; its clock also starts at the uint8 frame. The two engines
  run in alternating blocks so that load from other processes hits both alike; ``ratio`` is ours/ort fps.
- **end_to_end**: a file source → pipeline → null sink: output fps and capture→sink latency.

On CUDA a **roundtrip** is also timed: upload, inference, composite over a colour and download of the uint8
image, synchronised, which is the per-frame latency a live source sees from the GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ENGINES
from ..engine.loading import pick_engine, resolve_device
from ..engine.matter import Matter
from ..engine.state import check_ratio, ratio_for
from .common import bench_frames, encode_clip, machine_info
from .feedback import load_average, load_report, load_warning, progress

log = logging.getLogger(__name__)

BLOCK_GAP_S = 0.2
ALTERNATING_BLOCKS = 4


def summarize(seconds: list[float]) -> dict[str, float]:
    """fps (frames / total time) and latency percentiles in ms of per-frame timings."""
    ms = np.asarray(seconds) * 1000.0
    return {"frames": len(ms), "fps": round(len(ms) / (ms.sum() / 1000.0), 3),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3),
                           "p95": round(float(np.percentile(ms, 95)), 3),
                           "mean": round(float(ms.mean()), 3)}}


class OrtRunner:
    """The official ONNX export on onnxruntime's CPU provider, one frame at a time with the state carried."""

    def __init__(self, threads: int, ratio: float) -> None:
        import onnxruntime as ort

        from ..assets import fetch
        from ..engine.ort import cpu_session
        from ..weights import MOBILENETV3_ONNX_MIRROR

        self.version = ort.__version__
        self.session = cpu_session(fetch(MOBILENETV3_ONNX_MIRROR), threads)
        self.ratio = np.array([ratio], np.float32)
        self.state: list[np.ndarray | None] = [None] * 4

    def step(self, frame: np.ndarray) -> None:
        from ..engine.ort import run_recurrent

        src = (frame.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
        _, self.state = run_recurrent(self.session, {"src": src, "downsample_ratio": self.ratio}, self.state)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[np.ndarray], object], frames: list[np.ndarray], device: torch.device) -> list[float]:
    out = []
    for frame in frames:
        start = time.perf_counter()
        step(frame)
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


def _alternate(engines: dict[str, Callable[[np.ndarray], object]], frames: list[np.ndarray], warmup: int,
               device: torch.device) -> dict[str, list[float]]:
    """Warm every engine up, then time them in alternating blocks over the same frames."""
    progress(f"warming up {', '.join(engines)} ({warmup} frames each)")
    for step in engines.values():
        _timed(step, frames[:warmup], device)
    timed = frames[warmup:]
    times: dict[str, list[float]] = {name: [] for name in engines}
    edges = np.linspace(0, len(timed), min(ALTERNATING_BLOCKS, len(timed)) + 1).astype(int)
    for block, (lo, hi) in enumerate(zip(edges, edges[1:]), 1):
        progress(f"timing block {block}/{len(edges) - 1}: frames {lo}-{hi} of {len(timed)} on each engine")
        for name, step in engines.items():
            # let the previous engine's idle workers (onnxruntime and OpenMP spin-wait after a run) go to
            # sleep, so they do not take cores from the next engine's first frames
            time.sleep(BLOCK_GAP_S)
            times[name] += _timed(step, timed[lo:hi], device)
    return times


def _guarded(step: Callable[[np.ndarray], object], errors: dict[str, str],
             name: str) -> Callable[[np.ndarray], object]:
    """``step``, but a failure is recorded in ``errors`` and later calls do nothing: one failing engine
    must not throw away the numbers of the others."""
    def run(frame: np.ndarray) -> object:
        if name in errors:
            return None
        try:
            return step(frame)
        except Exception as exc:  # noqa: BLE001  (reported in the JSON, not raised)
            log.warning("bench: %s failed: %s", name, exc)
            errors[name] = f"{type(exc).__name__}: {exc}"
            return None
    return run


def _roundtrip(matter: Matter) -> Callable[[np.ndarray], object]:
    from ..compositing.backgrounds import parse_background
    from ..engine.render import RenderPlan

    engine, state = matter.engine, matter.stream_state
    plans = [RenderPlan(parse_background("green", device=matter.device, dtype=matter.dtype))]

    def step(frame: np.ndarray) -> np.ndarray:
        return engine.render(engine.infer([frame], [state]), plans)[0].image

    return step


def bench_end_to_end(frames: list[np.ndarray], *, backbone: str, device: str, fp16: bool,
                     downsample: str | float) -> dict[str, Any]:
    """File source → daemon → null sink; the daemon's own stats (fps_out, capture→sink latency)."""
    from ..config import Config
    from ..runtime.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="rvm-live-bench-") as tmp:
        source = encode_clip(frames, Path(tmp) / "bench.mp4")
        config = Config(source=str(source), outputs=("null",), device=device, fp16=fp16, backbone=backbone,
                        downsample=downsample, max_frames=len(frames))
        engine = pick_engine(config.engine, backbone=backbone, device=resolve_device(device), live=False)
        progress(f"end-to-end: {len(frames)} frames from a file through the pipeline ({engine} engine)")
        stats = Daemon(config).run()
    return {"available": True, "frames_out": stats.get("frames_out"), "fps": stats.get("fps_out"),
            "latency_ms": stats.get("latency_ms"), "engine": engine}


def _check_args(width: int, height: int, frames: int, threads: int | None) -> None:
    for name, value in (("width", width), ("height", height), ("frames", frames)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if min(width, height) < 32:
        raise ValueError(f"frame size {width}x{height} is too small (at least 32x32)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")


def run_bench(*, width: int, height: int, backbone: str = "mobilenetv3", device: str = "cpu", fp16: bool = False,
              frames: int = 100, threads: int | None = None, end_to_end: bool = True, onnx: bool = True,
              downsample: str | float = "auto", weights: str | None = None,
              engine: str = "auto") -> dict[str, Any]:
    """Run the benchmark and return its report (see the module docstring for what each section means)."""
    _check_args(width, height, frames, threads)
    load_before = load_average()
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    progress(f"{backbone} {width}x{height}: loading the model and {frames} frames")
    dev = resolve_device(device)
    ratio = ratio_for(downsample if downsample == "auto" else check_ratio(float(downsample)), height, width)
    warmup = max(3, min(10, frames // 5))
    clip = bench_frames(width, height, frames + warmup)
    engine = pick_engine(engine, backbone=backbone, device=dev, weights=weights)
    if engine.startswith("openvino"):  # it runs the fast stage only: the model row times the exact network
        engine = "onnxruntime"
    matter = Matter(backbone, weights=weights, device=dev, fp16=fp16, downsample_ratio=ratio, runtime=engine)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"width": width, "height": height, "backbone": backbone, "device": str(dev),
                     "dtype": str(matter.dtype).removeprefix("torch."), "threads": threads,
                     "downsample_ratio": round(ratio, 6), "frames": frames, "warmup": warmup,
                     "engine": matter.runtime, "auto_engine": auto_engines(backbone, dev, weights)},
    }
    engines: dict[str, Callable[[np.ndarray], object]] = {"model": matter.step}
    if matter.runtime != "torch":  # the daemon's default on this machine is not torch: time torch as well
        engines["model_torch"] = Matter(backbone, weights=weights, device=dev, fp16=fp16,
                                        downsample_ratio=ratio).step
    ort_reason = None
    if not onnx:
        ort_reason = "skipped (--no-onnx)"
    elif dev.type != "cpu":
        ort_reason = "CPU only (the comparison is onnxruntime's CPU provider)"
    elif backbone != "mobilenetv3":
        ort_reason = f"no official ONNX export mirrored for {backbone}"
    else:
        try:
            ort_runner = OrtRunner(threads, ratio)
            engines["onnxruntime"] = ort_runner.step
        except ImportError:
            ort_reason = "onnxruntime is not installed (pip install onnxruntime)"
    if dev.type == "cuda":
        engines["roundtrip"] = _roundtrip(matter)
    errors: dict[str, str] = {}
    times = _alternate({name: _guarded(step, errors, name) for name, step in engines.items()}, clip, warmup, dev)
    for name in ("model", "model_torch", "roundtrip"):
        if name in errors:
            report[name] = {"available": False, "reason": errors[name]}
        elif name in times:
            report[name] = summarize(times[name])
    if "onnxruntime" in errors:
        report["onnxruntime"] = {"available": False, "reason": errors["onnxruntime"]}
    elif "onnxruntime" in times:
        report["onnxruntime"] = {"available": True, "version": ort_runner.version, **summarize(times["onnxruntime"])}
        if "fps" in report["model"]:
            report["ratio_vs_onnxruntime"] = round(report["model"]["fps"] / report["onnxruntime"]["fps"], 3)
        if "fps" in report.get("model_torch", {}):
            report["torch_ratio_vs_onnxruntime"] = round(
                report["model_torch"]["fps"] / report["onnxruntime"]["fps"], 3)
    else:
        report["onnxruntime"] = {"available": False, "reason": ort_reason}
    del engines, matter
    if end_to_end:
        try:  # a failing pipeline run must not lose the model numbers above
            report["end_to_end"] = bench_end_to_end(clip, backbone=backbone, device=str(dev), fp16=fp16,
                                                    downsample=downsample if downsample == "auto" else ratio)
        except Exception as exc:  # noqa: BLE001  (reported, not raised)
            report["end_to_end"] = {"available": False, "reason": f"failed: {type(exc).__name__}: {exc}"}
    else:
        report["end_to_end"] = {"available": False, "reason": "skipped (--no-e2e)"}
    report["load"] = load_report(load_before, load_average(), own_cores=threads)
    return report


def auto_engines(backbone: str, device: torch.device, weights: str | None) -> dict[str, str]:
    """What ``--engine auto`` runs for each job kind on this machine (loading.pick_engine)."""
    return {kind: pick_engine("auto", backbone=backbone, device=device, weights=weights, live=kind == "live")
            for kind in ("live", "file")}


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    s = report["settings"]
    lines = [f"rvm-live bench: {s['backbone']} {s['width']}x{s['height']} on {s['device']} ({s['dtype']}, "
             f"{s['threads']} threads, ratio {s['downsample_ratio']:g}, {s['frames']} frames after "
             f"{s['warmup']} warm-up)",
             f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"torch {report['machine']['torch']}",
             f"{'':24}{'fps':>9}{'p50 ms':>10}{'p95 ms':>10}"]
    e2e = report["end_to_end"]
    rows = [(f"model ({s['engine']} engine)", report["model"]), ("model (torch engine)", report.get("model_torch")),
            ("roundtrip (GPU)", report.get("roundtrip")), ("onnxruntime (official)", report["onnxruntime"]),
            (f"end-to-end ({e2e['engine']})" if "engine" in e2e else "end-to-end", e2e)]
    for name, row in rows:
        if row is None:
            continue
        if row.get("available", True) is False:
            lines.append(f"{name:24}unavailable: {row['reason']}")
            continue
        lat = row.get("latency_ms") or {}
        p50, p95 = lat.get("p50"), lat.get("p95")
        lines.append(f"{name:24}{row['fps']:>9.2f}{p50 if p50 is not None else float('nan'):>10.1f}"
                     f"{p95 if p95 is not None else float('nan'):>10.1f}")
    if "ratio_vs_onnxruntime" in report:
        lines.append(f"ours / onnxruntime throughput: {report['ratio_vs_onnxruntime']:.2f}x"
                     + (f" (torch engine {report['torch_ratio_vs_onnxruntime']:.2f}x)"
                        if "torch_ratio_vs_onnxruntime" in report else ""))
    return "\n".join(lines + report_notes(report))


def report_notes(report: dict[str, Any]) -> list[str]:
    """The lines under the table: what auto picks, how to read model against end-to-end, a busy machine."""
    auto = report["settings"].get("auto_engine")
    notes = [f"--engine auto picks {auto['live']} for live sources and {auto['file']} for file jobs"] if auto else []
    if report["end_to_end"].get("fps") is not None:
        notes.append("model: one frame at a time, each waiting for the last (latency); end-to-end: decoding, "
                     "the network and the output overlap on separate threads, so its fps can exceed the model's")
    warning = load_warning(report.get("load") or {})
    return notes + ([warning] if warning else [])


def _downsample_arg(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        return check_ratio(float(value))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a ratio in (0, 1], got {value!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvm-live bench", description="Benchmark the model and the pipeline.")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--backbone", choices=("mobilenetv3", "resnet50"), default="mobilenetv3")
    parser.add_argument("--weights", default=None, help="weights file (default: the official weights)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--frames", type=int, default=100, help="timed frames (after the warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch and onnxruntime)")
    parser.add_argument("--downsample", type=_downsample_arg, default="auto")
    parser.add_argument("--engine", choices=("auto", *ENGINES), default="auto",
                        help="the runtime: timed as 'model' (an OpenVINO one runs the fast stage only, so the model "
                             "row times onnxruntime), and the one --live runs; auto: as the daemon picks it")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-e2e", dest="end_to_end", action="store_false", help="skip the pipeline run")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime comparison")
    parser.add_argument("--quality", action="store_true",
                        help="run the matting-quality benchmark instead (exact ground truth; its own flags: "
                             "rvm-live bench --quality --help)")
    live = parser.add_argument_group("live (--live: the real pipeline on a realtime source, see livebench.py)")
    live.add_argument("--live", action="store_true", help="run the live benchmark instead")
    live.add_argument("--fps", type=float, default=30.0, help="source frame rate")
    live.add_argument("--seconds", type=float, default=20.0, help="how long the source plays")
    live.add_argument("--hog", action="store_true", help="a busy-loop process pinned to core 0 runs beside it")
    live.add_argument("--fullres", choices=("auto", "exact", "fast"), default="auto",
                      help="full-resolution stage (fast: one OpenCV pass, see fullres.py; auto: what the daemon "
                           "picks, fast on the CPU)")
    live.add_argument("--fidelity-frames", type=int, default=90,
                      help="source frames compared against a fixed-quality run (0: skip)")
    return parser


def main(argv: list[str]) -> int:
    """``rvm-live bench [FLAGS]``; returns the exit status."""
    if "--quality" in argv:  # its own parser: sizes, engines, --json PATH and --chart PATH differ from the speed bench
        from .quality import main as quality_main

        return quality_main([a for a in argv if a != "--quality"])
    args = build_parser().parse_args(argv)
    if args.live:
        return _main_live(args)
    try:
        report = run_bench(width=args.width, height=args.height, backbone=args.backbone, device=args.device,
                           fp16=args.fp16, frames=args.frames, threads=args.threads, end_to_end=args.end_to_end,
                           onnx=args.onnx, downsample=args.downsample, weights=args.weights,
                           engine=args.engine)
    except ValueError as exc:
        sys.stderr.write(f"rvm-live bench: error: {exc}\n")
        return 2
    sys.stdout.write((json.dumps(report, indent=2) if args.json else format_report(report)) + "\n")
    return 0


def _main_live(args: argparse.Namespace) -> int:
    from .livebench import format_live_report, run_live_bench

    try:
        _check_args(args.width, args.height, args.fidelity_frames or 1, args.threads)
        report = run_live_bench(width=args.width, height=args.height, fps=args.fps, seconds=args.seconds,
                                hog=args.hog, fullres=args.fullres, engine=args.engine, downsample=args.downsample,
                                threads=args.threads, fidelity_frames=args.fidelity_frames)
    except ValueError as exc:
        sys.stderr.write(f"rvm-live bench: error: {exc}\n")
        return 2
    sys.stdout.write((json.dumps(report, indent=2) if args.json else format_live_report(report)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
