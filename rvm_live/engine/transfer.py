"""Host ↔ device copies. Up: uint8 frames through a reused pinned buffer on the engine's side stream.
Down: what the sinks read, through one reused pinned buffer and an event.

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


class Upload:
    """Host or device uint8 frames → the engine's device, in the right stream order (CUDA) or as they are
    (CPU). Host frames go through one reused pinned buffer, copied on ``stream`` so that the copy overlaps
    the current stream's work; frames already on the GPU stay on the stream that made them."""

    def __init__(self, device: torch.device, stream: torch.cuda.Stream | None) -> None:
        self.device, self.stream = device, stream
        self._pinned: torch.Tensor | None = None
        self._copied = torch.cuda.Event() if stream is not None else None

    def to_device(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames`` on the device, ready for the current stream."""
        if self.stream is None:
            return frames.to(self.device)
        if frames.device.type == "cuda":  # made on the current stream: stay there, no cross-stream hazard
            return frames.to(self.device)
        with torch.cuda.stream(self.stream):  # allocated on the side stream, which writes it first
            out = torch.empty(frames.shape, dtype=torch.uint8, device=self.device)
        self._pinned_copy(frames, out)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        out.record_stream(current)  # used on the current stream: not recycled by the side stream before that
        return out

    def into(self, frames: torch.Tensor, out: torch.Tensor) -> None:
        """Copy ``frames`` into the device buffer ``out`` that only ``stream`` reads (a graph's input), ordered
        before whatever is queued on ``stream`` next."""
        if self.stream is None or frames.device.type == "cuda":
            # on the current stream; the side stream's last reader of ``out`` is already before it (the
            # engine makes the current stream wait after each replay) and its next waits for it
            out.copy_(frames)
        else:
            # only the side stream touches ``out``: no wait, so the copy overlaps the current stream
            self._pinned_copy(frames, out)

    def _pinned_copy(self, frames: torch.Tensor, out: torch.Tensor) -> None:
        self._copied.synchronize()  # the previous copy has left the pinned buffer (at once if none yet)
        if self._pinned is None or self._pinned.shape != frames.shape:
            self._pinned = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        self._pinned.copy_(frames)
        with torch.cuda.stream(self.stream):
            out.copy_(self._pinned, non_blocking=True)
        self._copied.record(self.stream)
