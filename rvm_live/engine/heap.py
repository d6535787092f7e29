"""glibc's malloc and the torch CPU path's per-frame buffers.

A 720p frame on the torch path allocates and frees about 90 MB of full-resolution tensors (the refiner's 8-channel
upsample alone is 29.5 MB; then fgr, pha, the composite's temporaries). glibc decides per block whether a freed
block stays in the heap for the next frame or goes back to the kernel, with thresholds that adapt to what was
freed before and a trim that depends on what sits at the heap's top. So the same code ran fast in one process and,
in the next, took about 22,000 page faults per frame (the kernel zeroing 87 MB again), 15-20 % of a 720p frame
(BENCHMARKS.md, "torch on the CPU ... fifth session"). :func:`keep_freed_frames` fixes the thresholds so that
reuse is the rule; the price is up to :data:`TRIM_THRESHOLD` of freed memory held by the process.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 512 << 20  # free memory kept at the heap's top before it is returned to the kernel

_tuned: bool | None = None


def keep_freed_frames() -> bool:
    """Set glibc's mmap and trim thresholds, once per process (later calls return the first answer); False where
    the C library is not glibc or refused them."""
    global _tuned
    if _tuned is None:
        _tuned = _set_thresholds()
    return _tuned


def _set_thresholds() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        done = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False
    log.debug("glibc malloc: mmap threshold %d, trim threshold %d, set: %s", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done
