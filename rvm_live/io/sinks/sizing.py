"""Frames whose size changed mid-run, fitted to the size an output was opened with.

A camera renegotiating or a network sender restarting at another resolution must not end an output: a
device or an encoder keeps the size it was opened with, and the new frames are scaled to it (said once).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)


class SizeKeeper:
    """Scales frames to one output's opened size; warns once per size change, not once per frame."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._warned_for: tuple[int, int] | None = None

    def fit(self, image: np.ndarray, width: int, height: int) -> np.ndarray:
        """``image`` (H x W x C) as ``height`` x ``width``: itself when it already is, else scaled."""
        if image.shape[1] == width and image.shape[0] == height:
            return image
        size = (image.shape[1], image.shape[0])
        if self._warned_for != size:
            log.warning("output %s: frames are now %dx%d; scaling them to %dx%d", self.name, *size, width, height)
            self._warned_for = size
        shrinking = size[0] * size[1] > width * height
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
