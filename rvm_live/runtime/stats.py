"""Run statistics (counts, fps, capture→sink latency percentiles, outages) and the "no signal" card."""

from __future__ import annotations

import collections
import functools
import threading
import time
from typing import Any

import cv2
import numpy as np

LATENCY_WINDOW = 4096  # recent frames kept for percentiles: memory stays flat on a day-long run


class Stats:
    """Thread-safe counters shared by the pipeline's stages."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._latency_max = 0.0
        self._first_out: float | None = None
        self._last_out: float | None = None
        self._started = time.monotonic()
        self.outages = 0
        self.outage_seconds = 0.0
        self._outage_since: float | None = None

    def start(self) -> None:
        self._started = time.monotonic()

    def frame_in(self) -> None:
        with self._lock:
            self.frames_in += 1

    def frame_out(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames_out += 1
            if self._first_out is None:
                self._first_out = now
            self._last_out = now

    def latency(self, ms: float) -> None:
        with self._lock:
            self._latencies.append(ms)
            self._latency_max = max(self._latency_max, ms)

    def outage_started(self) -> None:
        with self._lock:
            self.outages += 1
            self._outage_since = time.monotonic()

    def outage_ended(self) -> float:
        """Close the current outage; returns its length in seconds."""
        with self._lock:
            seconds = time.monotonic() - (self._outage_since or time.monotonic())
            self.outage_seconds += seconds
            self._outage_since = None
            return seconds

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """The stats JSON (``extra`` adds the pipeline's own fields)."""
        with self._lock:
            lat = np.array(self._latencies) if self._latencies else None
            span = (self._last_out - self._first_out) if self._first_out is not None else 0.0
            fps = (self.frames_out - 1) / span if span > 0 and self.frames_out > 1 else 0.0
            outage_s = self.outage_seconds + (time.monotonic() - self._outage_since if self._outage_since else 0.0)
            data = {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "fps_out": round(fps, 3),
                "latency_ms": {
                    "p50": round(float(np.percentile(lat, 50)), 3) if lat is not None else None,
                    "p95": round(float(np.percentile(lat, 95)), 3) if lat is not None else None,
                    "max": round(self._latency_max, 3) if lat is not None else None,
                },
                "uptime_s": round(time.monotonic() - self._started, 3),
                "source_outages": self.outages,
                "source_outage_s": round(outage_s, 3),
            }
        data.update(extra)
        return data


@functools.lru_cache(maxsize=8)
def no_signal_card(height: int, width: int, channels: int = 3) -> np.ndarray:
    """A dark-grey RGB(A) frame reading "NO SIGNAL" (cached per size; callers must not modify it)."""
    card = np.full((height, width, 3), 32, np.uint8)
    text = "NO SIGNAL"
    scale = max(width / 640, 0.3)
    thickness = max(1, round(2 * scale))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    org = ((width - tw) // 2, (height + th) // 2)
    cv2.putText(card, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 200), thickness, cv2.LINE_AA)
    if channels == 4:
        card = np.dstack([card, np.full((height, width), 255, np.uint8)])
    card.setflags(write=False)
    return card
