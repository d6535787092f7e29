"""PyAV, always imported after OpenCV: the other order makes cv2's GUI calls spin forever (PyAV #978).

Every module of the package takes ``av`` from here (``from ._av import av``), which keeps that order without
the package's ``__init__`` importing OpenCV: ``import rvm_live`` stays light, so ``rvm-live`` installs its
signal handlers before any heavy import.
"""

import os  # isort: skip

import cv2  # noqa: F401  isort: skip
import av  # isort: skip

__all__ = ["av", "decoder_threads"]

PIXELS_PER_THREAD = 640 * 360  # a decoder thread per this many pixels: a smaller frame decodes fine on one
MAX_DECODER_THREADS = 8


def decoder_threads(width: int, height: int) -> int:
    """Threads for a decoder of ``width`` x ``height`` frames. FFmpeg's default (0: one per core, plus one) made
    pools of idle threads on many-core machines, one per decoder opened (probes, reopenings, backgrounds)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DECODER_THREADS, cores, width * height // PIXELS_PER_THREAD))
