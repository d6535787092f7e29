"""A tap on the output for the live preview: keeps only the latest frame and JPEG-encodes it on demand.

The sink thread only swaps a reference (no copy, no encoding), so a tap never slows the pipeline. Whoever
watches (the web page's ``/stream.mjpg``) calls :meth:`MjpegTap.wait_jpeg` from its own thread: a frame is
encoded at most once, however many clients watch, and not at all while nobody does.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .base import SinkBase, register_sink

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame

log = logging.getLogger(__name__)

JPEG_QUALITY = 80
CHECKER_PX = 16  # a transparent output is shown over a grey checkerboard, as image editors do


class MjpegTap(SinkBase):
    """The latest output frame, and its JPEG encoding made lazily for preview clients."""

    name = "preview"
    live = False  # never paced: with a file source a live sink would slow the whole job to the file's rate
    accepts_alpha = True

    def __init__(self, quality: int = JPEG_QUALITY) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"preview JPEG quality {quality!r}: expected 1..100")
        self.quality = quality
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._seq = 0  # bumped on every new frame; clients remember the last one they sent
        self._jpeg: tuple[int, bytes] | None = None  # (seq, bytes) of the last encoding
        self._encode_lock = threading.Lock()
        self.closed = False
        self.encoded = 0  # frames encoded so far: zero while nobody watches

    def open(self, width: int, height: int, fps: float) -> None:
        """Ready to take frames (again, after ``close()``)."""
        with self._cond:
            self.closed = False

    def write(self, frame: Frame) -> None:
        """Keep ``frame`` as the latest one: a reference swap, nothing else."""
        with self._cond:
            if self.closed:
                return  # closed until opened again
            self._frame = frame
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake waiting clients; the last frame stays readable. Safe to call more than once."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def seq(self) -> int:
        """How many frames the tap has seen."""
        return self._seq

    def wait_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The JPEG of the first frame newer than ``after``, as ``(seq, bytes)``; None on timeout or close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after or self.closed, timeout):
                return None
            if self._seq <= after or self._frame is None:
                return None
            frame, seq = self._frame, self._seq
        return seq, self._encode(frame, seq)

    def _encode(self, frame: Frame, seq: int) -> bytes:
        # one encoder at a time: a second client asking for the same frame reuses the first one's bytes
        with self._encode_lock:
            cached = self._jpeg
            if cached is not None and cached[0] >= seq:
                return cached[1]
            data = encode_jpeg(frame.image, self.quality)
            self._jpeg = (seq, data)
            self.encoded += 1
            return data


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB or RGBA uint8 ``H x W x C`` as JPEG bytes (RGBA over a checkerboard, JPEG has no alpha)."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"preview: expected an H x W x 3/4 uint8 image, got {image.shape} {image.dtype}")
    if image.shape[2] == 4:
        image = _over_checkerboard(image)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit 3-channel image
        raise ValueError("preview: JPEG encoding failed")
    return buf.tobytes()


def _over_checkerboard(rgba: np.ndarray) -> np.ndarray:
    # saturating uint8 arithmetic in OpenCV: about 8x faster than float NumPy at 1080p, off by at most 1
    alpha = cv2.extractChannel(rgba, 3)
    alpha3 = cv2.merge([alpha, alpha, alpha])
    front = cv2.multiply(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), alpha3, scale=1 / 255)
    back = cv2.multiply(_checkerboard(*rgba.shape[:2]), cv2.bitwise_not(alpha3), scale=1 / 255)
    return cv2.add(front, back)


@functools.lru_cache(maxsize=4)
def _checkerboard(height: int, width: int) -> np.ndarray:
    yy, xx = np.indices((height, width))
    light = ((yy // CHECKER_PX + xx // CHECKER_PX) % 2) == 0
    board = np.repeat(np.where(light, 204, 153).astype(np.uint8)[..., None], 3, axis=2)
    board.setflags(write=False)
    return board


@register_sink("preview")
def preview_sink(spec: str, config: Config) -> MjpegTap:
    """Factory for ``preview``: attached automatically when the control API (and its web page) is on."""
    return MjpegTap()
