"""One matting step as a captured CUDA graph: fixed-shape upload → network → state update, replayed per frame.

At 1080p and below the GPU finishes MobileNetV3 faster than Python can launch its ~300 kernels, so launch
overhead is the latency. A graph replays them all with one call. Shapes are fixed per capture: a new frame
size means a new graph (``Matter`` re-captures on a resolution change).

Buffers the graph reads and writes live at fixed addresses: the uint8 frame (device), the four recurrent
states and the outputs. The recurrent state is copied back into its input buffer at the end of the graph, so
replaying the graph *is* advancing the stream by one frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from .model.network import MattingNetwork

log = logging.getLogger(__name__)

WARMUP_ITERATIONS = 3  # cuDNN picks its algorithms (and torch.compile compiles) before the capture


def to_model_input(frame: Tensor, dtype: torch.dtype) -> Tensor:
    """``H x W x 3`` uint8 (on the model's device) → ``[1,3,H,W]`` in ``dtype``, 0..1, channels_last memory.

    The permute of an HWC image *is* channels_last, so this is one elementwise pass with no layout copy."""
    # unsqueeze *before* permute: the batch stride is then H*W*3, which layout detection recognises as
    # channels_last (after the permute it would be 3, read as NCHW, and every op downstream would revert)
    return frame.unsqueeze(0).permute(0, 3, 1, 2).to(dtype).mul_(1 / 255)


def graph_body(call: Callable[..., tuple[Tensor, ...]], frame: Tensor, state: list[Tensor],
               dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """What a graph captures: the uint8 ``frame`` buffer → network → new state written back into the
    ``state`` buffers; returns ``fgr, pha, src``. Everything in it must be capturable: no tensor made from
    host data, no sync (tests/test_capture_safety.py runs it under a trap on the CPU)."""
    src = to_model_input(frame, dtype)
    fgr, pha, *rec = call(src, *state)
    for buffer, new in zip(state, rec):
        buffer.copy_(new)
    return fgr, pha, src


class GraphedStep:
    """A CUDA graph of ``uint8 frame → fgr, pha`` for one frame size, with the recurrent state inside."""

    def __init__(self, model: MattingNetwork, *, height: int, width: int, dtype: torch.dtype, ratio: float,
                 always_refine: bool, device: torch.device, stream: torch.cuda.Stream) -> None:
        self.size = (height, width)
        self.stream = stream
        self.frame = torch.zeros((height, width, 3), dtype=torch.uint8, device=device)
        self._dtype = dtype
        self._call = lambda src, *rec: model(src, *rec, downsample_ratio=ratio, always_refine=always_refine)
        with torch.cuda.stream(stream), torch.inference_mode():
            # an eager run gives the state shapes; zero states are what a ``None`` state means
            _, _, *rec = self._call(to_model_input(self.frame, dtype))
            self.state = [torch.zeros_like(r) for r in rec]
            for _ in range(WARMUP_ITERATIONS):
                self._body()
            self.reset()
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the control thread may build a new background on this device during the capture
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            self.fgr, self.pha, self.src = self._body()
        with torch.inference_mode():
            self.reset()
        log.info("captured a CUDA graph for %dx%d frames", width, height)

    def _body(self) -> tuple[Tensor, Tensor, Tensor]:
        return graph_body(self._call, self.frame, self.state, self._dtype)

    def reset(self) -> None:
        """Zero the recurrent state (the graph reads it in place), on the current stream: the caller makes
        the graph's stream wait for it before the next replay."""
        for buffer in self.state:
            buffer.zero_()

    def replay(self) -> tuple[Tensor, Tensor]:
        """Run one frame (already copied into ``self.frame``) on ``self.stream``; outputs are overwritten by
        the next replay."""
        self.graph.replay()
        return self.fgr, self.pha
