"""A sink that only counts frames: for benchmarks, where any real output would be the bottleneck."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...errors import SinkError
from .base import SinkBase, register_sink

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame

log = logging.getLogger(__name__)


class NullSink(SinkBase):
    """Discards frames, counting them and remembering the last frame's capture-to-output latency."""

    name = "null"
    live = False  # never paced: a benchmark wants the pipeline's full speed
    accepts_alpha = True

    def __init__(self) -> None:
        self.frames = 0
        self.size: tuple[int, int] | None = None
        self.last_latency_ms: float | None = None
        self._open = False

    def open(self, width: int, height: int, fps: float) -> None:
        """Remember the size (frames of another size are taken too: a source may change size mid-run)."""
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError(f"null sink: bad size/fps {width}x{height} @ {fps}")
        self.size = (width, height)
        self._open = True

    def write(self, frame: Frame) -> None:
        """Count ``frame``."""
        if not self._open:
            raise SinkError("null sink: write() before open()")
        if (frame.width, frame.height) != self.size:  # a source changed size: nothing here depends on it
            log.info("null sink: frames are now %dx%d", frame.width, frame.height)
            self.size = (frame.width, frame.height)
        self.frames += 1
        self.last_latency_ms = frame.age_ms()

    def close(self) -> None:
        """Log the count; safe to call more than once."""
        if self._open:
            log.debug("null sink: %d frames", self.frames)
        self._open = False


@register_sink("null")
def null_sink(spec: str, config: Config) -> NullSink:
    """Factory for ``null``."""
    return NullSink()
