"""Measure the seam: how far a segment's alpha, started W frames early, is from one sequential run's.

``python -m rvm_live.batch.seams [CLIP] [--warmups 0,2,4,8,16,32] [--every 10] [--after 15]``

For each seam position s (every ``--every`` frames) and each W, the clip is matted from frame s - W, the W
warm-up frames are dropped, and the alpha of frames s .. s + after - 1 is compared with the sequential run's
alpha of the same frames: mean |Δα| (alpha in 0..1) over those frames, and over the first one alone. The
table in BENCHMARKS.md, and so ``DEFAULT_WARMUP``, come from this.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any

import numpy as np

from ..config import Config
from ..frame import Frame
from ..io.sinks.base import SinkBase
from .plan import Probe, Window, boundary, probe
from .segments import SegmentSource, WarmupDrop


class AlphaSink(SinkBase):
    """An output that keeps each frame's alpha (0..1) by timestamp, instead of encoding it."""

    name, live, accepts_alpha = "alpha", False, True

    def __init__(self) -> None:
        self.alpha: dict[float, np.ndarray] = {}

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def write(self, frame: Frame) -> None:
        alpha = frame.alpha if frame.alpha is not None else frame.image[..., 3]
        self.alpha[round(frame.pts, 6)] = alpha.astype(np.float32) / 255.0


def matte_window(clip: str, window: Window, config: Config, engine: Any) -> list[np.ndarray]:
    """The alpha of every frame ``window`` keeps (warm-up dropped), in order, through the daemon."""
    from ..runtime.daemon import Daemon

    sink = AlphaSink()
    source = SegmentSource(clip, window, fps=config.fps)
    Daemon(config.replace(source=clip), engine=engine, source=source, sinks=[WarmupDrop(sink, window.start)]).run()
    return [sink.alpha[t] for t in sorted(sink.alpha)]


def _window(info: Probe, first: int, warmup: int, last: int | None) -> Window:
    at = functools.partial(boundary, info)
    return Window(0, 1, at(first - warmup) if first else None, at(first) if first else None,
                  at(last) if last is not None else None, warmup)


def measure(clip: str, warmups: list[int], *, every: int, after: int, config: Config) -> dict[str, Any]:
    """``{W: {"mean": mean |Δα| over the frames after each seam, "first": on the first frame alone, "worst":
    the worst seam's mean}}``, against one sequential run of ``clip``."""
    from ..engine.select import build_engine

    info = probe(clip)
    if not info.fps or info.frames < every + after:
        raise ValueError(f"{clip}: too short to measure seams every {every} frames")
    engine = build_engine(config, live=False)
    reference = matte_window(clip, Window(0, 1, None, None, None, 0), config, engine)
    seams = [s for s in range(every, len(reference) - after + 1, every) if s >= max(warmups)] or [every]
    table: dict[str, Any] = {"clip": clip, "frames": len(reference), "seams": seams, "after": after, "warmup": {}}
    for warmup in warmups:
        errors = []
        for s in seams:
            alpha = matte_window(clip, _window(info, s, min(warmup, s), s + after), config, engine)
            errors.append([float(np.abs(a - r).mean()) for a, r in zip(alpha, reference[s: s + after])])
        table["warmup"][warmup] = {"mean": float(np.mean(errors)), "first": float(np.mean([e[0] for e in errors])),
                                   "worst": float(max(np.mean(e) for e in errors))}
    return table


def markdown(table: dict[str, Any]) -> str:
    """The table as BENCHMARKS.md shows it."""
    last = table["after"] - 1
    rows = [f"| W (warm-up frames) | mean \\|Δα\\|, frames 0-{last} after the seam | first frame after | worst seam |",
            "|---|---|---|---|"]
    for w, e in table["warmup"].items():
        rows.append(f"| {w} | {e['mean']:.5f} | {e['first']:.5f} | {e['worst']:.5f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print the seam table for a clip (default: the demo clip) as Markdown, then as JSON."""
    p = argparse.ArgumentParser(prog="python -m rvm_live.batch.seams", description=__doc__.split("\n\n")[0])
    p.add_argument("clip", nargs="?", help="a video file (default: the demo clip)")
    p.add_argument("--warmups", default="0,2,4,8,16,32", help="comma-separated W values")
    p.add_argument("--every", type=int, default=10, help="a seam every N frames")
    p.add_argument("--after", type=int, default=15, help="frames measured after each seam")
    p.add_argument("--downsample", type=float, help="fixed internal ratio (default auto)")
    args = p.parse_args(argv)
    from ..assets import demo_clip

    clip = args.clip or str(demo_clip())
    config = Config(bg="transparent", downsample=args.downsample or "auto", log_level="warning")
    table = measure(clip, [int(w) for w in args.warmups.split(",")], every=args.every, after=args.after,
                    config=config)
    print(markdown(table))
    json.dump(table, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
