"""Progress on the terminal: a tqdm bar for file jobs, a one-line status refreshed each second for live runs.

Both read the pipeline's public ``stats()`` from their own thread, so the stages never wait on a terminal.
Log records are routed through tqdm meanwhile, so they print above the bar instead of through it. Nothing
is shown when stderr is not a terminal (logs and CI stay clean) or with ``--quiet``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .io._av import av

log = logging.getLogger(__name__)

BAR_PERIOD_S = 0.25
STATUS_PERIOD_S = 1.0
FPS_WINDOW = 3  # status samples the fps are averaged over


def expected_frames(path: str | None, max_frames: int | None = None) -> int | None:
    """How many frames a file job will produce: the file's frame count (capped by ``max_frames``), or None."""
    total = None
    if path and Path(path).is_file():
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                total = stream.frames or None
                if total is None and stream.duration and stream.average_rate:
                    total = round(float(stream.duration * stream.time_base * stream.average_rate))
        except (av.FFmpegError, OSError, IndexError, UnicodeDecodeError) as exc:
            log.debug("no frame count for %s: %s", path, exc)
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    return total or None


def status_line(stats: dict[str, Any], fps_in: float | None, fps_out: float | None) -> str:
    """The live status: fps in/out, latency percentiles, drops, and the quality ratio when there is one."""
    def num(value: Any, digits: int) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    lat = stats.get("latency_ms") or {}
    parts = [f"in {num(fps_in, 1)} fps", f"out {num(fps_out, 1)} fps",
             f"latency p50 {num(lat.get('p50'), 0)} ms p95 {num(lat.get('p95'), 0)} ms",
             f"drops {stats.get('frames_dropped', 0)}"]
    for key in ("quality", "downsample_ratio"):  # a governor's "quality" wins over the fixed ratio
        if isinstance(stats.get(key), (int, float)):
            parts.append(f"{'ratio' if key == 'downsample_ratio' else key} {stats[key]:.2f}")
            break
    if stats.get("paused"):
        parts.append("PAUSED")
    if stats.get("source_up") is False:
        parts.append("SOURCE LOST")
    return "  ".join(parts)


def _size_options(stream: TextIO) -> dict[str, Any]:
    """tqdm's size options: follow the terminal, or 80x24 for one that reports 0x0 (tqdm would draw nothing)."""
    try:
        if os.get_terminal_size(stream.fileno()).columns > 0:
            return {"dynamic_ncols": True}
    except (OSError, ValueError, AttributeError):
        pass
    return {"ncols": 80, "nrows": 24}


class Progress:
    """A thread showing a progress bar (``live=False``) or a status line (``live=True``) until ``close()``."""

    def __init__(self, stats: Callable[[], dict[str, Any]], *, live: bool, total: int | None = None,
                 stream: TextIO | None = None) -> None:
        self._stats = stats
        self.live = live
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rvm-progress", daemon=True)
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(logging_redirect_tqdm())
        size = _size_options(self._stream)
        if live:
            self._bar = tqdm(file=self._stream, bar_format="{desc}", leave=False, **size)
        else:
            self._bar = tqdm(total=total, unit="frame", desc="matting", file=self._stream,
                             mininterval=BAR_PERIOD_S, smoothing=0.1, **size)
        # (time, frames_in, frames_out) of the last few samples: fps over ~3 s, not jumping with each second
        self._recent: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=FPS_WINDOW + 1)
        self._closed = False

    def start(self) -> Progress:
        self._thread.start()
        return self

    def _run(self) -> None:
        period = STATUS_PERIOD_S if self.live else BAR_PERIOD_S
        while not self._stop.wait(period):
            try:
                self._show(self._stats())
            except Exception:  # a display problem must never take the run down
                log.debug("progress display failed", exc_info=True)
                return

    def _show(self, stats: dict[str, Any]) -> None:
        if not self.live:
            self._bar.update(max(0, stats["frames_out"] - self._bar.n))
            return
        self._recent.append((time.monotonic(), stats["frames_in"], stats["frames_out"]))
        (t0, in0, out0), (t1, in1, out1) = self._recent[0], self._recent[-1]
        fps_in = fps_out = None
        if t1 > t0:
            fps_in, fps_out = (in1 - in0) / (t1 - t0), (out1 - out0) / (t1 - t0)
        self._bar.set_description_str(status_line(stats, fps_in, fps_out), refresh=True)

    def close(self) -> None:
        """Stop the thread, show the final count (file jobs), give the terminal back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if not self.live:
            with contextlib.suppress(Exception):
                self._show(self._stats())
        self._bar.close()
        self._exit.close()


def start_progress(pipeline: Any, *, quiet: bool = False, stream: TextIO | None = None) -> Progress | None:
    """Show progress for a started ``pipeline`` on ``stream`` (stderr), unless ``quiet`` or not a terminal."""
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        return None
    sessions = pipeline.sessions
    live = any(s.live for s in sessions)
    total = None
    if not live and not any(s.config.loop for s in sessions):
        counts = [expected_frames(getattr(s.source, "target", None) or s.config.source, s.config.max_frames)
                  for s in sessions]
        total = sum(counts) if None not in counts else None
    return Progress(pipeline.stats, live=live, total=total, stream=stream).start()
