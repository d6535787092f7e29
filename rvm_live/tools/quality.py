"""``python -m rvm_live.tools.quality``: matting quality against exact ground truth, per setting, with its speed.

Each setting (a row) mattes the ground-truth clips of :mod:`~rvm_live.tools.quality_data` (a person layer over a
moving background, so the true alpha is known exactly) from a fresh stream state per clip; it is scored with
:mod:`~rvm_live.tools.quality_metrics` (RVM's MAD, MSE, Grad, dtSSD, and the composite's error at the
person's edge) and timed per frame on this machine (median after a warm-up). The rows: every rung of the
quality governor's ladder, extra internal sizes (multiples of 16 and their neighbours), both full-resolution
stages and both engines at RVM's ratio, MediaPipe's selfie segmentation as a peer (when installed), and two
trivial baselines (alpha all 0, all 1).

Everything that touches an engine is in :data:`RUNNERS`: a new engine or precision is one entry there and one
name in :data:`MODEL_ENGINES`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from . import quality_data as data
from .quality_metrics import ClipScore, edge_band, gauss_gradient, minmax
from .quality_report import format_row, format_table

log = logging.getLogger(__name__)

SIZES = {"360p": (640, 360), "720p": (1280, 720)}
# the first one present runs the ladder (the CPU daemon's default); openvino runs the fast stage only
MODEL_ENGINES = ("onnxruntime", "torch", "openvino", "openvino-bf16", "openvino-int8")
EXACT_ENGINES = ("onnxruntime", "torch")
# engines besides the first scored on every rung, not only RVM's ratio
WHOLE_LADDER = ("openvino-bf16", "openvino-int8")
PEER = "mediapipe"
PEER_INTERNAL = "256x144"  # the input of the landscape selfie model
FULLRES = ("fast", "exact")
# 512x288, 256x144: 16:9 multiples of 16, and their ±16 px neighbours; 192, 160: the old rungs under the floor
EXTRA_PX = (640, 528, 512, 496, 272, 256, 240, 192, 160)
WARMUP_FRAMES = 3
TIMING_ROUNDS, TIMING_BLOCK = 3, 6  # the timing pass: rounds x frames per setting
QUICK_TIMING = (1, 3)
BLOCK_GAP_S = 0.1
# the torch engine on a GPU (exact stage, RVM's ratio) in fp32 and fp16: run only when named (--engines), on --gpu
CUDA_ENGINES = {"cuda-fp32": False, "cuda-fp16": True}  # name: fp16


@dataclass(frozen=True)
class Setting:
    """One row: ``engine`` and ``fullres`` pick the runner, ``ratio`` the network's downsample ratio (None for
    the peer and the baselines), ``role`` why the row is there."""

    engine: str
    fullres: str = ""
    ratio: float | None = None
    role: str = "ladder"

    @property
    def name(self) -> str:
        return f"{self.engine} {self.fullres}".strip()


class Runner(Protocol):
    """A setting, ready to matte one stream: ``reset()`` starts a clip, ``step(frame)`` returns the uint8 alpha
    ``H x W`` and the uint8 foreground ``H x W x 3`` (None: the frame itself)."""

    def reset(self) -> None: ...

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def _u8(x: Any) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, np.float32)), 0, 255).astype(np.uint8)


class _Model:
    """The network on one runtime, with the exact or the fast full-resolution stage: the daemon's own
    ``Engine.infer`` and ``Engine.render``, rendered as RGBA over a transparent background (alpha and foreground,
    exactly as an output that takes alpha gets them)."""

    _engines: dict[tuple[str, str, str], Any] = {}  # one engine (model) per runtime, stage and device: shared

    def __init__(self, setting: Setting, gpu: str = "cuda") -> None:
        import torch

        from ..compositing.backgrounds import parse_background
        from ..engine.core import Engine
        from ..engine.render import RenderPlan

        on_gpu = setting.engine in CUDA_ENGINES
        key = (setting.engine, setting.fullres, gpu if on_gpu else "cpu")
        if key not in self._engines and on_gpu:  # the daemon's CUDA engine: torch, exact stage, graphs
            self._engines[key] = Engine("mobilenetv3", device=gpu, fp16=CUDA_ENGINES[setting.engine])
        elif key not in self._engines:
            self._engines[key] = Engine("mobilenetv3", runtime=setting.engine, fullres=setting.fullres, device="cpu",
                                        threads=torch.get_num_threads())
        self.engine, self.ratio = self._engines[key], setting.ratio
        self.plan = RenderPlan(parse_background("transparent"), None, True)
        self.reset()

    def reset(self) -> None:
        self.state = self.engine.new_state(self.ratio)

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        (picture,) = self.engine.render(self.engine.infer([frame], [self.state]), [self.plan])
        return np.ascontiguousarray(picture.image[..., 3]), np.ascontiguousarray(picture.image[..., :3])


class _MediaPipe:
    """MediaPipe's selfie segmentation (the landscape model its 0.10 wheels ship), offline; its mask is the alpha."""

    def __init__(self, setting: Setting) -> None:
        import mediapipe

        self._solution = mediapipe.solutions.selfie_segmentation
        self._segmenter = None
        self.reset()

    def reset(self) -> None:
        if self._segmenter is not None:
            self._segmenter.close()
        self._segmenter = self._solution.SelfieSegmentation(model_selection=1)

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return _u8(self._segmenter.process(frame).segmentation_mask * 255), None


class _Constant:
    """A baseline: the same alpha everywhere."""

    def __init__(self, setting: Setting) -> None:
        self.value = 255 if setting.engine == "alpha=1" else 0

    def reset(self) -> None:
        pass

    def step(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return np.full(frame.shape[:2], self.value, np.uint8), None


# (engine, fullres) -> runner; the one place that knows the engines
RUNNERS: dict[tuple[str, str], Callable[[Setting], Runner]] = {
    **{(engine, "exact"): _Model for engine in EXACT_ENGINES},
    **{(engine, "fast"): _Model for engine in MODEL_ENGINES},
    (PEER, ""): _MediaPipe,
    ("alpha=0", ""): _Constant,
    ("alpha=1", ""): _Constant,
    **{(engine, "exact"): _Model for engine in CUDA_ENGINES},
}


def peer_missing() -> str | None:
    """Why the MediaPipe peer cannot run here, or None."""
    hint = "pip install 'mediapipe<0.10.22' (the last wheels that ship the selfie model)"
    try:
        import mediapipe
    except ImportError as exc:
        return f"mediapipe is not importable ({type(exc).__name__}: {exc}); {hint}"
    if not hasattr(getattr(mediapipe, "solutions", None), "selfie_segmentation"):
        return f"mediapipe {getattr(mediapipe, '__version__', '?')} has no solutions.selfie_segmentation; {hint}"
    return None


# ----- which rows ----------------------------------------------------------------------------------------------
def internal_size(height: int, width: int, ratio: float | None) -> str:
    """The network's internal ``WxH`` at ``ratio`` (floor, as torch's and the export's resize), or ``-``."""
    if ratio is None:
        return "-"
    return f"{width}x{height}" if ratio == 1 else f"{int(width * ratio)}x{int(height * ratio)}"


def settings_for(height: int, width: int, engines: list[str], quick: bool = False) -> list[Setting]:
    """The rows for one frame size: the ladder and the extra sizes on the first model engine's fast stage,
    every engine x stage at RVM's ratio, the peer, the baselines."""
    from ..engine.state import recommended_ratio
    from ..runtime.governor import ladder_ratios

    models = [e for e in MODEL_ENGINES if e in engines]
    top = recommended_ratio(height, width)
    ladder = ladder_ratios(height, width, top)
    rows: list[Setting] = []
    if models:
        main = models[0]
        rungs = [ladder[0], ladder[-1]] if quick else ladder
        rows += [Setting(main, "fast", r, "ladder") for r in rungs]
        if not quick:
            long_side = max(height, width)
            extras = sorted({round(px / long_side, 4) for px in EXTRA_PX if px <= long_side} - set(ladder))
            rows += [Setting(main, "fast", r, "extra") for r in reversed(extras)]
        # a precision that trades quality for speed is scored on every rung: it may buy a better rung than fp32
        rows += [Setting(e, "fast", r, "ladder") for e in models[1:] if e in WHOLE_LADDER for r in rungs]
        combos = [("torch", "exact")] if quick else [(e, f) for e in models for f in FULLRES if (e, f) in RUNNERS]
        rows += [Setting(e, f, top, "engines") for e, f in combos if (e, f) != (main, "fast") and e in models]
    rows += [Setting(e, "exact", top, "engines") for e in CUDA_ENGINES if e in engines]
    if PEER in engines:
        rows.append(Setting(PEER, role="peer"))
    rows += [Setting("alpha=0", role="baseline"), Setting("alpha=1", role="baseline")]
    return rows


# ----- running -------------------------------------------------------------------------------------------------
@dataclass
class Truth:
    """What every setting is scored against, per clip, computed once: alphas in 0..1, their gradients and edge
    bands, the true foregrounds."""

    clip: data.Clip
    alpha: list[np.ndarray]
    gradient: list[np.ndarray]
    band: list[np.ndarray]


def prepare(clip: data.Clip) -> Truth:
    """The per-frame truth of ``clip`` for scoring."""
    alpha = [a.astype(np.float32) / np.float32(255) for a in clip.alpha]
    return Truth(clip, alpha, [gauss_gradient(minmax(a)).astype(np.float32) for a in alpha],
                 [edge_band(a) for a in alpha])


def score(runner: Runner, truths: list[Truth]) -> dict[str, float]:
    """Matte every clip with ``runner`` from a fresh state per clip and score it against the truth."""
    result = ClipScore()
    for truth in truths:
        runner.reset()
        result.new_clip()
        for i, frame in enumerate(truth.clip.frames):
            alpha, fgr = runner.step(frame)
            result.add(alpha.astype(np.float32) / np.float32(255), frame if fgr is None else fgr, truth.alpha[i],
                       truth.clip.fgr[i], true_gradient=truth.gradient[i], band=truth.band[i])
    return result.result()


def time_runners(runners: list[Runner], frames: np.ndarray, rounds: int = TIMING_ROUNDS,
                 block: int = TIMING_BLOCK) -> list[float]:
    """Median ms per frame of each runner on ``frames``, after a warm-up, timed in round-robin blocks so that load
    from other processes (this machine is shared) falls on every setting alike."""
    for runner in runners:
        for frame in frames[:WARMUP_FRAMES]:
            runner.step(frame)
    times: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        for runner, spent in zip(runners, times):
            time.sleep(BLOCK_GAP_S)  # let the last runner's idle worker threads go to sleep
            runner.reset()
            for j in range(block + 1):
                frame = frames[(r * block + j) % len(frames)]
                start = time.perf_counter()
                runner.step(frame)
                if j:  # a fresh state's first step is not a steady one
                    spent.append(time.perf_counter() - start)
    return [float(np.median(t) * 1e3) for t in times]


def parse_sizes(text: str) -> list[tuple[str, int, int]]:
    """``360p,720p`` or ``WxH`` items → ``[(name, width, height)]``."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item in SIZES:
            out.append((item, *SIZES[item]))
            continue
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"size {item!r}: expected {', '.join(SIZES)} or WxH") from None
        out.append((item, width, height))
    if not out:
        raise ValueError("no sizes given")
    return out


def run_benchmark(sizes: list[tuple[str, int, int]], frames: int | list[int], engines: list[str], *,
                  quick: bool = False, clips: list[str] | None = None, progress: TextIO | None = None,
                  extra: Callable[[int, int], list[Setting]] | None = None,
                  threads: int | None = None, gpu: str = "cuda") -> dict[str, Any]:
    """Score and time every setting at every size (``frames`` per clip: one count, or one per size); the
    report (see :func:`~.quality_report.format_table` and the JSON). ``extra(height, width)``: more settings per size;
    ``threads``: CPU threads of both engines (default: torch's); ``gpu``: where the :data:`CUDA_ENGINES` rows run."""
    import torch

    unknown = [e for e in engines if e not in (*MODEL_ENGINES, *CUDA_ENGINES, PEER)]
    if unknown:
        known = ", ".join([*MODEL_ENGINES, *CUDA_ENGINES, PEER])
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; expected some of {known}")
    counts = frames if isinstance(frames, list) else [frames] * len(sizes)
    if len(counts) != len(sizes) or min(counts) < 1:
        raise ValueError(f"frames: expected one count >= 1 or one per size ({len(sizes)}), got {frames}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)  # the onnxruntime sessions take torch's count too
    say = (lambda line: progress.write(line + "\n") or progress.flush()) if progress else (lambda line: None)
    rounds, block = QUICK_TIMING if quick else (TIMING_ROUNDS, TIMING_BLOCK)
    report: dict[str, Any] = {"machine": _machine(), "recipe": _recipe(), "frames_per_clip": counts,
                              "engines": engines, "quick": quick, "threads": torch.get_num_threads(),
                              "timing": {"rounds": rounds, "frames": block},
                              "rows": [], "skipped": []}
    if quick:
        clips = clips or [data.CLIPS[0].name]
    why = peer_missing() if PEER in engines else None
    if why:
        report["skipped"].append(f"{PEER}: {why}")
        say(f"skipped {PEER}: {why}")
        engines = [e for e in engines if e != PEER]
    for (size, width, height), count in zip(sizes, counts):
        loaded, missing = data.load_clips(width, height, count, clips)
        for name, why in missing.items():
            report["skipped"].append(f"{size} clip {name}: {why}")
            say(f"skipped {size} clip {name}: {why}")
        if loaded:
            settings = settings_for(height, width, engines, quick) + (extra(height, width) if extra else [])
            report["rows"] += _run_size(size, width, height, loaded, settings, say, (rounds, block), gpu)
    return report


def _run_size(size: str, width: int, height: int, clips: list[data.Clip], settings: list[Setting],
              say: Callable[[str], None], timing: tuple[int, int], gpu: str = "cuda") -> list[dict[str, Any]]:
    """The rows of one frame size: every setting scored on every clip, then all timed together."""
    truths = [prepare(clip) for clip in clips]
    rows, runners = [], []
    for setting in settings:
        make = RUNNERS[(setting.engine, setting.fullres)]
        runner = make(setting, gpu) if setting.engine in CUDA_ENGINES else make(setting)
        internal = PEER_INTERNAL if setting.engine == PEER else internal_size(height, width, setting.ratio)
        rows.append({"size": size, "width": width, "height": height, "setting": setting.name, **asdict(setting),
                     "internal": internal, "clips": [c.name for c in clips], **score(runner, truths)})
        runners.append(runner)
        say(f"{format_row(rows[-1])}   (scored; timed at the end)")
    for row, ms in zip(rows, time_runners(runners, clips[0].frames, *timing)):
        row["ms_per_frame"] = ms
    return rows


def _machine() -> dict[str, Any]:
    from .common import machine_info

    return machine_info()


def _recipe() -> dict[str, Any]:
    return {"version": data.RECIPE_VERSION, "layer_long_side": data.LAYER_LONG_SIDE, "alpha_snap": data.ALPHA_SNAP,
            "clips": [asdict(spec) for spec in data.CLIPS]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvm-live bench --quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="360p,720p", help="comma list of 360p, 720p or WxH")
    parser.add_argument("--frames", default="30", help="frames per clip: N, or N,N,... one per size")
    parser.add_argument("--engines", default=",".join([*MODEL_ENGINES, PEER]), help="comma list of engines")
    parser.add_argument("--clips", default=None, help=f"comma list of clips ({', '.join(c.name for c in data.CLIPS)})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both engines (default: torch's)")
    parser.add_argument("--gpu", default="cuda", help=f"device of the {', '.join(CUDA_ENGINES)} rows (cuda:N; cpu: a "
                        "dry run without a GPU)")
    parser.add_argument("--quick", action="store_true", help="one clip, few settings (tests)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--chart", type=Path, default=None, help="draw the speed/quality chart (PNG) here")
    return parser


def main(argv: list[str]) -> int:
    """Run the quality benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
        try:
            counts = [int(n) for n in args.frames.split(",")]
        except ValueError:
            raise ValueError(f"--frames: expected N or N,N,... (one per size), got {args.frames!r}") from None
        report = run_benchmark(sizes, counts[0] if len(counts) == 1 else counts,
                               [e.strip() for e in args.engines.split(",")], quick=args.quick,
                               clips=args.clips.split(",") if args.clips else None, progress=sys.stderr,
                               threads=args.threads, gpu=args.gpu)
    except ValueError as exc:
        sys.stderr.write(f"rvm-live bench --quality: error: {exc}\n")
        return 2
    sys.stdout.write(format_table(report) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.chart:
        from .quality_report import draw_chart

        draw_chart(report, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
