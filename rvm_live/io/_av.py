"""PyAV, always imported after OpenCV: the other order makes cv2's GUI calls spin forever (PyAV #978).

Every module of the package takes ``av`` from here (``from ._av import av``), which keeps that order without
the package's ``__init__`` importing OpenCV: ``import rvm_live`` stays light, so ``rvm-live`` installs its
signal handlers before any heavy import.
"""

import os  # isort: skip

import numpy as np  # isort: skip

import cv2  # noqa: F401  isort: skip
import av  # isort: skip

__all__ = ["RgbConverter", "av", "decoder_threads"]

PIXELS_PER_THREAD = 640 * 360  # a decoder thread per this many pixels: a smaller frame decodes fine on one
MAX_DECODER_THREADS = 8


def decoder_threads(width: int, height: int) -> int:
    """Threads for a decoder of ``width`` x ``height`` frames. FFmpeg's default (0: one per core, plus one) made
    pools of idle threads on many-core machines, one per decoder opened (probes, reopenings, backgrounds)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DECODER_THREADS, cores, width * height // PIXELS_PER_THREAD))


class RgbConverter:
    """Decoded frames to RGB arrays through one swscale context, kept for the life of a decoder.

    ``VideoFrame.to_ndarray`` makes a new swscale context for every frame, with ``threads=0`` (one per core):
    a pool of threads started and joined for every frame (1440 thread creations for 720 frames on 2 cores; a
    core count's worth per frame on a big machine) and the context's tables allocated and freed each time,
    churn that spreads the daemon's memory over glibc's per-thread arenas. One context, with threads for big
    frames only (``decoder_threads``), keeps one pool, or none.
    """

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        """``frame`` as an ``HxWx3`` uint8 RGB array (the context adapts to a new size by itself)."""
        threads = decoder_threads(frame.width, frame.height)
        return self._reformatter.reformat(frame, format="rgb24", threads=threads).to_ndarray()
