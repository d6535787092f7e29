"""``rvm-live bench --live``: the real daemon on a realtime source, as a person in a video call sees it.

The demo clip, scaled to ``W x H``, is written to a temporary file at ``--fps`` and played ``--realtime --loop``
through the daemon's pipeline into a null output, for ``--seconds``. Reported:

- **fps out** after the warm-up (frames out over the sampled window) and the pipeline's own stats;
- **capture → output latency** p50/p95/max (the sink's clock, frame by frame);
- **the ratio over time** (stats' ``downsample_ratio``, sampled every ``SAMPLE_S``);
- **fidelity** against a fixed-quality run: the alpha of the first ``--fidelity-frames`` source frames that
  came out, against the exact path (official export, auto ratio) run over every source frame in order;
  frames the live run dropped also cost its recurrent state, which is part of what this measures;
- with ``--hog``, a busy-loop process pinned to core 0 runs beside it (a video-call app taking a core).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..io.sinks.null import NullSink
from .feedback import load_report, load_warning, progress

log = logging.getLogger(__name__)

SAMPLE_S = 0.5
WARMUP_S = 3.0  # model load, first inferences and onnxruntime's graph preparation
HOG_CODE = "while True: pass"
CLIP_FRAMES = 120  # the demo clip's length


class RecordingNullSink(NullSink):
    """The null output, also keeping the alpha of source frames ``index < keep`` for the fidelity check."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.alphas: dict[int, np.ndarray] = {}

    def write(self, frame: Any) -> None:
        super().write(frame)
        if frame.index < self.keep and frame.alpha is not None:
            self.alphas[frame.index] = frame.alpha.copy()


class CpuHog:
    """A busy-loop Python process pinned to one core, for as long as the ``with`` block lasts."""

    def __init__(self, core: int = 0) -> None:
        self.core = core
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> CpuHog:
        self.process = subprocess.Popen([sys.executable, "-c", HOG_CODE])
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.process.pid, {self.core})
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def run_pipeline_sampled(config: Any, sink: NullSink, seconds: float) -> tuple[dict[str, Any], list[dict], dict]:
    """Run the daemon for ``seconds`` (then stop it), sampling its stats every ``SAMPLE_S``; returns the
    final stats, the samples and ``{t, cpu_s}``: wall and process CPU seconds while it ran (model load
    excluded; the source's decoding of every frame, dropped or not, included)."""
    from ..runtime.daemon import Daemon

    pipeline = Daemon(config, sinks=[sink])
    samples: list[dict] = []
    start, cpu_start = time.monotonic(), time.process_time()
    try:
        pipeline.start()
        while not pipeline.wait(timeout=SAMPLE_S):
            stats = pipeline.stats()
            samples.append({"t": round(time.monotonic() - start, 2), "frames_out": stats["frames_out"],
                            "ratio": stats.get("downsample_ratio")})
            if time.monotonic() - start >= seconds:
                pipeline.stop()
    finally:
        pipeline.close()
    samples.append({"t": round(time.monotonic() - start, 2), "cpu_s": time.process_time() - cpu_start})
    return pipeline.stats(), samples[:-1], samples[-1]


def steady_fps(samples: list[dict], warmup_s: float = WARMUP_S) -> float | None:
    """Frames out per second between the first sample after ``warmup_s`` and the last one."""
    window = [s for s in samples if s["t"] >= warmup_s]
    if len(window) < 2 or window[-1]["t"] <= window[0]["t"]:
        return None
    return round((window[-1]["frames_out"] - window[0]["frames_out"]) / (window[-1]["t"] - window[0]["t"]), 2)


def ratio_timeline(samples: list[dict]) -> list[tuple[float, float | None]]:
    """``(t, ratio)`` at the start and at every change."""
    out: list[tuple[float, float | None]] = []
    for s in samples:
        if not out or s["ratio"] != out[-1][1]:
            out.append((s["t"], s["ratio"]))
    return out


def decode_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of a video file as RGB uint8 (the clip as the pipeline's source sees it)."""
    from ..io._av import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if len(out) >= count:
                break
            out.append(frame.to_ndarray(format="rgb24"))
    return out


def reference_alphas(frames: list[np.ndarray], *, threads: int | None) -> list[np.ndarray]:
    """uint8 alpha of every frame from the exact path at fixed quality (the runtime ``auto`` picks for a file
    job) at the auto ratio, every frame in order."""
    import torch

    from ..compositing.backgrounds import parse_background
    from ..engine.core import Engine
    from ..engine.loading import pick_engine
    from ..engine.render import RenderPlan

    if threads:
        torch.set_num_threads(threads)
    # the exact path's runtime: what auto picks for a file job on the CPU (it runs every frame, in order)
    runtime = pick_engine("auto", backbone="mobilenetv3", device=torch.device("cpu"), live=False)
    engine = Engine("mobilenetv3", device="cpu", runtime=runtime,
                    fullres="fast" if runtime.startswith("openvino") else "exact")
    state, plans = engine.new_state(), [RenderPlan(parse_background("green"))]
    return [engine.render(engine.infer([frame], [state]), plans)[0].alpha.copy() for frame in frames]


def fidelity(recorded: dict[int, np.ndarray], reference: list[np.ndarray]) -> dict[str, Any]:
    """mean and max |Δα| (0..1) over the recorded frames that have a reference."""
    pairs = [(recorded[i], reference[i]) for i in sorted(recorded) if i < len(reference)]
    if not pairs:
        return {"frames": 0, "mean_abs_alpha": None, "max_abs_alpha": None}
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in pairs]
    # max is one pixel anywhere in the clip; the share of pixels off by more than half says how many there are
    flipped = float(np.mean([(d > 127).mean() for d in diffs]))
    return {"frames": len(pairs), "mean_abs_alpha": round(float(np.mean([d.mean() for d in diffs])) / 255, 5),
            "max_abs_alpha": round(max(int(d.max()) for d in diffs) / 255, 4), "share_over_half": round(flipped, 6)}


def run_live_bench(*, width: int, height: int, fps: float = 30.0, seconds: float = 20.0, hog: bool = False,
                   fullres: str = "auto", engine: str = "auto", downsample: str | float = "auto",
                   threads: int | None = None, fidelity_frames: int = 90, queue_size: int = 1) -> dict[str, Any]:
    """Run the live benchmark and return its report (see the module docstring)."""
    from ..config import Config
    from ..engine.select import fullres_mode
    from .common import bench_frames, encode_clip, machine_info

    if seconds <= WARMUP_S:
        raise ValueError(f"seconds must be more than the {WARMUP_S:g} s warm-up, got {seconds!r}")
    if not 0 <= fidelity_frames <= CLIP_FRAMES:
        raise ValueError(f"fidelity frames must be 0..{CLIP_FRAMES} (one pass of the clip), got {fidelity_frames!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    clip = bench_frames(width, height, CLIP_FRAMES)  # the whole demo clip, looped by the source
    sink = RecordingNullSink(keep=fidelity_frames)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rvm-live-livebench-") as tmp:
        source = encode_clip(clip, Path(tmp) / "live.mp4", fps=round(fps))
        config = Config(source=str(source), realtime=True, loop=True, outputs=("null",), device="cpu",
                        engine=engine, fullres=fullres, downsample=downsample, queue_size=queue_size,
                        log_level="warning")
        progress(f"playing a {width}x{height} clip at {fps:g} fps for {seconds:g} s ({live_engine(config)} engine, "
                 f"fullres {fullres_mode(config, live=True)})")
        if hog:
            with CpuHog():
                stats, samples, used = run_pipeline_sampled(config, sink, seconds)
        else:
            stats, samples, used = run_pipeline_sampled(config, sink, seconds)
        played = decode_frames(source, fidelity_frames)  # what the source gave, after encoding
    load_after = os.getloadavg()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"width": width, "height": height, "fps": fps, "seconds": seconds, "hog": hog,
                     "fullres": fullres, "fullres_used": fullres_mode(config, live=True), "engine": engine,
                     "engine_used": live_engine(config),
                     "downsample": downsample, "threads": threads,
                     "queue_size": queue_size},
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "load": load_report(load_before[0], load_after[0], own_cores=used["cpu_s"] / used["t"]),
        "cores_used": round(used["cpu_s"] / used["t"], 2),  # CPU time we got per second: what others left us
        # what one output frame cost the cores (first inferences included): on idle cores fps <= cores*1000/this
        "cpu_ms_per_frame_out": round(1000 * used["cpu_s"] / max(stats["frames_out"], 1), 1),
        "fps_out": steady_fps(samples),
        "frames_in": stats["frames_in"], "frames_out": stats["frames_out"],
        "frames_dropped": stats["frames_dropped"],
        "latency_ms": stats["latency_ms"],
        "ratio_over_time": ratio_timeline(samples),
    }
    if fidelity_frames:
        progress(f"fidelity: {len(played)} frames through the exact path at fixed quality")
        reference = reference_alphas(played, threads=threads)
        report["fidelity"] = fidelity(sink.alphas, reference)
    return report


def live_engine(config: Any) -> str:
    """The engine the daemon runs for ``config``'s live source (what ``auto`` resolves to)."""
    import torch

    from ..engine.loading import pick_engine

    return pick_engine(config.engine, backbone=config.backbone, device=torch.device("cpu"), weights=config.weights,
                       live=True)


def format_live_report(report: dict[str, Any]) -> str:
    """The human-readable summary."""
    s, lat = report["settings"], report["latency_ms"]
    fid = report.get("fidelity") or {}
    ratios = ", ".join(f"{t:g}s: {r}" for t, r in report["ratio_over_time"])
    return "\n".join([
        f"rvm-live bench --live: {s['width']}x{s['height']}@{s['fps']:g} for {s['seconds']:g} s, fullres "
        f"{s['fullres_used']}, engine {s['engine']}"
        + (f" ({s['engine_used']})" if s.get("engine_used") and s["engine_used"] != s["engine"] else "")
        + f", downsample {s['downsample']}"
        + (", CPU hog on core 0" if s["hog"] else ""),
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; load average "
        f"{report['load_average_1min']['before']} -> {report['load_average_1min']['after']}, this process used "
        f"{report['cores_used']} cores, {report['cpu_ms_per_frame_out']} CPU ms per frame out",
        f"fps out {report['fps_out']}  (frames in {report['frames_in']}, out {report['frames_out']}, "
        f"dropped {report['frames_dropped']})",
        f"latency p50 {lat['p50']} ms  p95 {lat['p95']} ms  max {lat['max']} ms",
        f"ratio over time: {ratios}",
        f"fidelity vs fixed quality: mean |Δα| {fid.get('mean_abs_alpha')}  max |Δα| {fid.get('max_abs_alpha')}  "
        f"over {fid.get('frames', 0)} frames; {100 * (fid.get('share_over_half') or 0):.3f}% of pixels off by more "
        "than 0.5 (max is a single pixel: an edge that a dropped frame or a lower ratio moved flips from 0 to 1)",
        *([load_warning(report["load"])] if load_warning(report.get("load") or {}) else []),
    ])
