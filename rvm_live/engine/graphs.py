"""One matting step as a captured CUDA graph: fixed-shape upload → network → state update, replayed per step.

At 1080p and below the GPU finishes MobileNetV3 faster than Python can launch its ~300 kernels, so launch
overhead is the latency. A graph replays them all with one call. Shapes are fixed per capture, so the
engine keeps one graph per (batch, height, width, ratio).

Buffers the graph reads and writes live at fixed addresses: the uint8 frames (device), the four recurrent
states and the outputs. The recurrent state is copied back into its input buffers at the end of the graph,
so replaying the graph *is* advancing its streams by one frame. Slot ``b`` of the state buffers belongs to
whichever :class:`~rvm_live.engine.state.StreamState` last ran there (``owners``); its ``rec`` are then
views of that slot (``views[b]``), and no copy is needed while the same streams keep coming.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

WARMUP_ITERATIONS = 3  # cuDNN picks its algorithms (and torch.compile compiles) before the capture


def to_model_input(frames: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B,]H,W,3`` uint8 (on the model's device) → ``[B,3,H,W]`` in ``dtype``, 0..1, channels_last memory.

    The permute of an HWC image *is* channels_last, so this is one elementwise pass with no layout copy."""
    # unsqueeze *before* permute: the batch stride is then H*W*3, which layout detection recognises as
    # channels_last (after the permute it would be 3, read as NCHW, and every op downstream would revert)
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    return frames.permute(0, 3, 1, 2).to(dtype).mul_(1 / 255)


def graph_body(call: Callable[..., tuple[Tensor, ...]], frame: Tensor, state: list[Tensor],
               dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """What a graph captures: the uint8 ``frame`` buffer → network → new state written back into the
    ``state`` buffers; returns ``fgr, pha, src``. Everything in it must be capturable: no tensor made from
    host data, no sync (tests/runtime/test_capture_safety.py runs it under a trap on the CPU)."""
    src = to_model_input(frame, dtype)
    fgr, pha, *rec = call(src, *state)
    for buffer, new in zip(state, rec):
        buffer.copy_(new)
    return fgr, pha, src


class GraphedStep:
    """A CUDA graph of ``uint8 frames [B,H,W,3] → fgr, pha`` for one shape and ratio, state inside."""

    def __init__(self, call: Callable[..., tuple[Tensor, ...]], *, batch: int, height: int, width: int,
                 dtype: torch.dtype, device: torch.device, stream: torch.cuda.Stream) -> None:
        self.key = (batch, height, width)
        self.stream = stream
        self._dtype = dtype
        self._call = call
        # The long-lived buffers are allocated on the current stream: when the graph is dropped they go back
        # to its pool, and the current stream has waited for every replay by then (the engine makes it wait
        # after each), so nothing can reuse them under a replay still queued on ``stream``.
        self.frame = torch.zeros((batch, height, width, 3), dtype=torch.uint8, device=device)
        current = torch.cuda.current_stream(device)
        with torch.inference_mode():
            stream.wait_stream(current)  # the zeroed frame
            with torch.cuda.stream(stream):  # an eager run gives the state shapes
                _, _, *rec = call(to_model_input(self.frame, dtype))
            self.state = [torch.zeros_like(r) for r in rec]  # zero states are what a ``None`` state means
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_ITERATIONS):
                    self._body()
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the control thread may build a new background on this device during the capture
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            self.fgr, self.pha, self.src = self._body()
        with torch.inference_mode():
            self.reset()
        self.views = [[buffer[b:b + 1] for buffer in self.state] for b in range(batch)]
        self.owners: list[object | None] = [None] * batch
        log.info("captured a CUDA graph for %d x %dx%d frames", batch, width, height)

    def _body(self) -> tuple[Tensor, Tensor, Tensor]:
        return graph_body(self._call, self.frame, self.state, self._dtype)

    def reset(self) -> None:
        """Zero the recurrent state (the graph reads it in place), on the current stream: the caller makes
        the graph's stream wait for it before the next replay."""
        for buffer in self.state:
            buffer.zero_()

    def replay(self) -> tuple[Tensor, Tensor]:
        """Run one step (frames already in ``self.frame``) on ``self.stream``; outputs are overwritten by
        the next replay."""
        self.graph.replay()
        return self.fgr, self.pha
