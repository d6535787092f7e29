"""The engine: one model on one device, run for any number of streams at once.

``Engine.step(images, states)`` mattes one frame for each of B streams in one network call (batch B): the
frames go up as uint8, each stream's recurrent state (:class:`StreamState`) goes in and comes back out,
and nothing of one stream ever reaches another's state (the network is per-sample along the batch).

On CUDA the model runs in fp16 and channels_last; host frames go up through a reused pinned buffer on a
dedicated stream, and each (B, H, W, ratio) gets a captured CUDA graph, replayed per step. Chunks along
time (``run_clip``) run eagerly, from and back into the same state.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..config import ENGINES
from ..model.network import MattingNetwork
from ..weights import BACKBONES
from .graphs import GraphedStep, to_model_input
from .loading import get_model, resolve_device, resolve_dtype
from .ort import OrtMattingNetwork
from .state import StreamState
from .transfer import Download, Upload

log = logging.getLogger(__name__)

MAX_GRAPHS = 4  # captured graphs kept (least recently used dropped): each holds its own memory pool


def uses_cuda(device: torch.device) -> bool:
    """Whether ``device`` takes the CUDA path (side stream, pinned uploads, graphs). One place, so that
    tests/engine/test_stream_order.py can walk that path on the CPU with recording stand-ins for the CUDA API."""
    return device.type == "cuda"


class StepOutput(NamedTuple):
    """One step's results on the device: ``fgr [B,3,H,W]``, ``pha [B,1,H,W]`` and ``src [B,3,H,W]`` (the
    frames as the network saw them). Valid until the engine's next step (a graph overwrites them)."""

    fgr: Tensor
    pha: Tensor
    src: Tensor


def as_frames(images: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor) -> Tensor:
    """uint8 ``H x W x 3`` frames (a sequence, or one ``B x H x W x 3`` array) as one ``[B,H,W,3]`` tensor;
    a named error for anything else."""
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4:
        batch = [images]
    else:
        batch = list(images)
        if not batch:
            raise ValueError("no frames given")
    tensors = []
    for image in batch:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
            image = torch.from_numpy(np.ascontiguousarray(image))
        elif not isinstance(image, Tensor):
            raise TypeError(f"a frame must be a numpy array or a tensor, got {type(image).__name__}")
        elif image.dtype != torch.uint8:
            raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
        if image.ndim not in (3, 4) or image.shape[-1] != 3 or 0 in image.shape:
            raise ValueError(f"frame must be H x W x 3, got shape {tuple(image.shape)}")
        tensors.append(image if image.ndim == 4 else image.unsqueeze(0))
    if len({tuple(t.shape[1:]) for t in tensors}) > 1:
        raise ValueError(f"frames of one step must share a size, got {sorted({tuple(t.shape[1:3]) for t in tensors})}")
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class Engine:
    """The model, device, dtype and transfers; runs B streams per call against their own states."""

    def __init__(self, backbone: str = "mobilenetv3", *, model: MattingNetwork | None = None,
                 weights: str | Path | None = None, device: str | torch.device | None = None,
                 fp16: bool | None = None, engine: str = "torch", compile: bool = False,
                 cuda_graphs: bool | None = None, channels_last: bool = True, always_refine: bool = False,
                 offline: bool | None = None) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(fp16, self.device)
        self.engine = engine
        self.always_refine = always_refine
        self.graphs: OrderedDict[tuple[int, int, int, float], GraphedStep] = OrderedDict()
        self.download = Download()  # the inference thread's device → host copies
        on_cuda = uses_cuda(self.device)
        if engine == "onnxruntime":
            if not (self.device.type == "cpu" and backbone == "mobilenetv3" and model is None and not cuda_graphs
                    and not compile):
                raise ValueError("engine='onnxruntime' runs the mobilenetv3 ONNX export on the CPU (fp32); it takes "
                                 "no model=, cuda_graphs= or compile=")
            self.model, self.backbone, self.always_refine = None, backbone, True  # the export always refines
            self._network = OrtMattingNetwork(weights, offline=offline)
            self.cuda_graphs = False
        else:
            if model is None:
                model = get_model(backbone, weights=weights, device=self.device, dtype=self.dtype, offline=offline)
            else:
                model = model.eval().to(device=self.device, dtype=self.dtype)
            if channels_last:
                # measured on CPU (BENCHMARKS.md) and the layout cuDNN's fp16 tensor-core kernels want
                model = model.to(memory_format=torch.channels_last)
            self.model = model
            self.backbone = getattr(model, "backbone_name", backbone)
            self._network = torch.compile(model, dynamic=False) if compile else model
            if cuda_graphs and not on_cuda:
                raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
            self.cuda_graphs = on_cuda if cuda_graphs is None else bool(cuda_graphs)
        # the CUDA path: a side stream for uploads and graph replays; cuDNN autotunes once per shape
        self._stream = torch.cuda.Stream(self.device) if on_cuda else None
        if on_cuda:
            torch.backends.cudnn.benchmark = True
        self._upload = Upload(self.device, self._stream)

    def new_state(self, downsample_ratio: float | str | None = "auto") -> StreamState:
        """A fresh stream state (``"auto"``: RVM's ratio for whatever frame size comes)."""
        return StreamState(downsample_ratio)

    # ----- per step -----------------------------------------------------------------------------------
    def _prepare(self, states: Sequence[StreamState], height: int, width: int, batch: int) -> float:
        """Size every state for ``height x width`` frames; returns their common ratio."""
        if len(states) != batch:
            raise ValueError(f"{batch} frames but {len(states)} states")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a state appears twice in one step")
        for state in states:
            if state.prepare(height, width):
                log.debug("stream state (re)sized for %dx%d frames, ratio %s", width, height, state.ratio)
        ratios = {s.ratio for s in states}
        if len(ratios) != 1:
            raise ValueError(f"states of one step must share a ratio, got {sorted(ratios)}")
        return ratios.pop()

    def upload(self, images: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor) -> Tensor:
        """uint8 frames → ``[B,3,H,W]`` in the model dtype on the device (uint8 crosses the bus)."""
        return to_model_input(self._upload.to_device(as_frames(images)), self.dtype)

    @torch.inference_mode()
    def step(self, images: Sequence[np.ndarray | Tensor], states: Sequence[StreamState]) -> StepOutput:
        """Matte one frame per stream (all one size), advancing each stream's state; see :class:`StepOutput`.

        A state whose frame size changes is reset first (and its ``"auto"`` ratio recomputed); the states
        must then share a ratio (``ValueError`` otherwise)."""
        frames = as_frames(images)
        batch, height, width = frames.shape[:3]
        ratio = self._prepare(states, height, width, batch)
        if not self.cuda_graphs:
            src = to_model_input(self._upload.to_device(frames), self.dtype)
            fgr, pha = self._forward(src, states, ratio)
            return StepOutput(fgr, pha, src)
        return self._replay(frames, states, ratio)

    @torch.inference_mode()
    def run_clip(self, src: Tensor, state: StreamState) -> tuple[Tensor, Tensor]:
        """Run ``T`` consecutive frames of one stream, ``src [1,T,3,H,W]`` (device, model dtype, 0..1), in
        one call along time, carrying ``state``; returns ``fgr [1,T,3,H,W]`` and ``pha [1,T,1,H,W]``."""
        if src.ndim != 5 or src.shape[0] != 1:
            raise ValueError(f"run_clip takes [1,T,3,H,W], got {tuple(src.shape)}")
        ratio = self._prepare([state], src.shape[-2], src.shape[-1], 1)
        if self.engine == "onnxruntime":  # the export runs one time step per call
            outs = [self._forward(src[:, t], [state], ratio) for t in range(src.shape[1])]
            return torch.stack([f for f, _ in outs], 1), torch.stack([p for _, p in outs], 1)
        return self._forward(src, [state], ratio)

    def _forward(self, src: Tensor, states: Sequence[StreamState], ratio: float) -> tuple[Tensor, Tensor]:
        """Eager network call over the batch of ``states`` (``src`` ``[B,3,H,W]`` or ``[1,T,3,H,W]``); the new
        state goes back to each stream (into its graph slot when it holds one, so that graph stays valid)."""
        fgr, pha, *rec = self._network(src, *_batched(states), downsample_ratio=ratio,
                                       always_refine=self.always_refine)
        for b, state in enumerate(states):
            new = [r[b:b + 1] for r in rec] if len(states) > 1 else rec
            if self._in_graph(state) and all(o.shape == n.shape for o, n in zip(state.rec, new)):
                for old, value in zip(state.rec, new):
                    old.copy_(value)
            else:
                state.rec = list(new)
        return fgr, pha

    def _in_graph(self, state: StreamState) -> bool:
        return any(state.rec[0] is view[0] for graph in self.graphs.values() for view in graph.views)

    # ----- CUDA graphs --------------------------------------------------------------------------------
    def _graph(self, batch: int, height: int, width: int, ratio: float) -> GraphedStep:
        key = (batch, height, width, ratio)
        graph = self.graphs.get(key)
        if graph is None:
            while len(self.graphs) >= MAX_GRAPHS:
                _, dropped = self.graphs.popitem(last=False)
                _release(dropped)
            network, refine = self._network, self.always_refine

            def call(src: Tensor, *rec: Tensor) -> tuple[Tensor, ...]:
                return network(src, *rec, downsample_ratio=ratio, always_refine=refine)

            graph = self.graphs[key] = GraphedStep(call, batch=batch, height=height, width=width, dtype=self.dtype,
                                                   device=self.device, stream=self._stream)
        self.graphs.move_to_end(key)
        return graph

    def _replay(self, frames: Tensor, states: Sequence[StreamState], ratio: float) -> StepOutput:
        batch, height, width = frames.shape[:3]
        graph = self._graph(batch, height, width, ratio)
        current = torch.cuda.current_stream(self.device)
        self._upload.into(frames, graph.frame)  # ordered before the replay below
        for b, state in enumerate(states):  # state copies run on the current stream, like eager steps
            _seat(graph, b, state)
        # the caller is done with the previous outputs (the replay overwrites them) and every state copy or
        # reset queued on the current stream comes first
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            fgr, pha = graph.replay()
        current.wait_stream(self._stream)
        return StepOutput(fgr, pha, graph.src)


def _batched(states: Sequence[StreamState]) -> list[Tensor | None]:
    """r1..r4 of the streams stacked along the batch (``None`` where every stream starts afresh; zeros for
    the fresh ones among carried streams)."""
    if len(states) == 1:
        return list(states[0].rec)
    out: list[Tensor | None] = []
    for i in range(4):
        parts = [s.rec[i] for s in states]
        like = next((p for p in parts if p is not None), None)
        out.append(None if like is None else torch.cat([torch.zeros_like(like) if p is None else p for p in parts]))
    return out


def _seat(graph: GraphedStep, slot: int, state: StreamState) -> None:
    """Make slot ``slot`` of the graph's state buffers hold ``state``; afterwards ``state.rec`` are views of
    that slot. No copy when the state already is that slot; a previous owner still viewing it is given
    its own copy first."""
    views = graph.views[slot]
    if state.rec[0] is views[0]:
        return
    previous = graph.owners[slot]
    if previous is not None and previous is not state and previous.rec[0] is views[0]:
        previous.rec = [v.clone() for v in views]
    for view, value in zip(views, state.rec):
        if value is None:
            view.zero_()
        else:
            view.copy_(value)
    graph.owners[slot] = state
    state.rec = list(views)


def _release(graph: GraphedStep) -> None:
    """Hand the states seated in a dropped graph their own copies (their views would outlive it)."""
    for slot, owner in enumerate(graph.owners):
        if owner is not None and owner.rec[0] is graph.views[slot][0]:
            owner.rec = [v.clone() for v in graph.views[slot]]
