"""Device → host copies for what the sinks read: one reused pinned buffer and an event on CUDA.

A blocking ``.cpu()`` copies into pageable memory through a driver staging buffer and waits for the whole
stream. Here the copy goes straight into page-locked memory (full-speed DMA), the host waits on an event
recorded right after that copy only, then hands out its own array (sinks keep frames, so the pinned buffer
itself is never given away: the next frame overwrites it).
"""

from __future__ import annotations

import numpy as np
import torch


class Download:
    """Callable: a device tensor → a host ``np.ndarray`` the caller owns. On the CPU it is the tensor's own
    memory (no copy); on CUDA a copy through a pinned buffer reused while the shape and dtype stay the same.

    One instance per thread (the buffer is reused call after call)."""

    def __init__(self) -> None:
        self._pinned: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None

    def __call__(self, tensor: torch.Tensor) -> np.ndarray:
        if tensor.device.type != "cuda":
            return tensor.numpy()
        if self._pinned is None or self._pinned.shape != tensor.shape or self._pinned.dtype != tensor.dtype:
            self._pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._done = torch.cuda.Event()
        self._pinned.copy_(tensor, non_blocking=True)  # queued on the stream that produced ``tensor``
        self._done.record(torch.cuda.current_stream(tensor.device))
        self._done.synchronize()  # this copy only: other streams' work goes on
        return self._pinned.numpy().copy()
