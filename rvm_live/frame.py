"""The unit that travels through the pipeline, carrying its own timing end to end."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One video frame.

    ``image`` is ``H x W x 3`` RGB uint8 from a source, and ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA,
    for transparent output) after compositing. ``capture_ns`` is ``time.monotonic_ns()`` at capture and is
    never changed downstream, so a sink can measure capture-to-output latency.
    """

    index: int
    capture_ns: int
    stream_id: str
    image: np.ndarray
    alpha: np.ndarray | None = None  # H x W uint8, the alpha this very frame was composited with
    generation: int = 0  # bumped each time the source is reopened: the recurrent state starts afresh
    pts: float | None = None  # the source's presentation time in seconds (files played once), else None

    @property
    def source_id(self) -> str:
        """The stream and the source generation: ``"cam1#2"``."""
        return f"{self.stream_id}#{self.generation}"

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def with_image(self, image: np.ndarray, alpha: np.ndarray | None = None) -> Frame:
        """The same frame (index, timing, source) with a new picture."""
        return replace(self, image=image, alpha=alpha)

    def age_ms(self, now_ns: int | None = None) -> float:
        """Milliseconds since capture."""
        return ((now_ns if now_ns is not None else time.monotonic_ns()) - self.capture_ns) / 1e6


class EndOfStream:
    """Sentinel passed downstream once a source is exhausted; stages forward it and stop."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EndOfStream"


END = EndOfStream()
