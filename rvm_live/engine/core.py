"""The engine: one model on one device, run for any number of streams at once.

``Engine.infer(frames, states)`` mattes one frame for each of B streams (streams of one size and ratio in one
network call): the frames go up as uint8, each stream's recurrent state (:class:`StreamState`) goes in and
comes back out, and nothing of one stream ever reaches another's state (the network is per-sample along the
batch). ``Engine.render(matte, plans)`` then blends each frame over its stream's background and brings the
picture to the host, on any thread (the daemon's render thread overlaps it with the next ``infer``).

The full-resolution stage is the engine's choice (``fullres``): ``"exact"`` is the network's own guided
filter on the device (``Matte`` = fgr, pha, src tensors; render = one composite and one pinned download);
``"fast"`` (CPU) stops the network at the low-resolution coefficients and renders with one OpenCV pass
(rvm_live/engine/fullres.py). The runtime (``torch`` or ``onnxruntime``) is another choice; one model (one
onnxruntime session) serves every stream.

On the CPU, ``bf16=True`` runs the torch network's low-resolution part in bfloat16 (the refiner, the
compositing and the frames stay float32); measured in BENCHMARKS.md ("torch on the CPU ... fifth session").
On CUDA the model runs in fp16 and channels_last; host frames go up through a reused pinned buffer on a
dedicated stream, and each (B, H, W, ratio) gets a captured CUDA graph, replayed per call. Chunks along
time (``infer_clip``, ``run_clip``) run eagerly, from and back into the same state.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..compositing.backgrounds import Background, parse_background
from ..config import ENGINES
from ..model.network import MattingNetwork
from ..weights import BACKBONES
from .fullres import FastFullRes
from .graphs import GraphedStep, to_model_input
from .heap import keep_freed_frames
from .loading import get_model, resolve_device, resolve_dtype
from .lowres import OrtCoefficients, downsample
from .ort import OrtMattingNetwork, official_export
from .render import CoefficientRows, DeviceRows, Matte, Picture, RenderPlan, RenderTools, Rows
from .state import StreamState, stack_states
from .transfer import Download, Upload

log = logging.getLogger(__name__)

MAX_GRAPHS = 4  # captured graphs kept (least recently used dropped): each holds its own memory pool
FULLRES = ("exact", "fast")


def uses_cuda(device: torch.device) -> bool:
    """Whether ``device`` takes the CUDA path (side stream, pinned uploads, graphs). One place, so that
    tests/engine/test_stream_order.py can walk that path on the CPU with recording stand-ins for the CUDA API."""
    return device.type == "cuda"


def _check_frame(image: object) -> np.ndarray | Tensor:
    """One uint8 ``H x W x 3`` frame (array or tensor), or a named error."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
    elif not isinstance(image, Tensor):
        raise TypeError(f"a frame must be a numpy array or a tensor, got {type(image).__name__}")
    elif image.dtype != torch.uint8:
        raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
    if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ValueError(f"frame must be H x W x 3, got shape {tuple(image.shape)}")
    return image


def as_frames(images: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor) -> Tensor:
    """uint8 ``H x W x 3`` frames (a sequence, or one ``B x H x W x 3`` array) as one ``[B,H,W,3]`` tensor;
    a named error for anything else."""
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4 and len(images):
        _check_frame(images[0])  # the frames of one array share its dtype and size: taken whole, not copied
        return torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    batch = list(images)  # a sequence of frames
    if not batch:
        raise ValueError("no frames given")
    tensors = []
    for image in map(_check_frame, batch):
        tensors.append(torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image)
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise ValueError(f"frames of one call must share a size, got {sorted({tuple(t.shape[:2]) for t in tensors})}")
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)  # a lone frame: a view, not a copy


class Engine:
    """The model, device, dtype, runtime and full-resolution stage; runs B streams per call against their own
    states (``infer``) and renders the results (``render``)."""

    def __init__(self, backbone: str = "mobilenetv3", *, model: MattingNetwork | None = None,
                 weights: str | Path | None = None, device: str | torch.device | None = None,
                 fp16: bool | None = None, runtime: str = "torch", fullres: str = "exact", compile: bool = False,
                 cuda_graphs: bool | None = None, channels_last: bool = True, always_refine: bool = False,
                 offline: bool | None = None, threads: int | None = None, bf16: bool = False) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if runtime not in ENGINES:
            raise ValueError(f"runtime must be one of {', '.join(ENGINES)}, got {runtime!r}")
        if fullres not in FULLRES:
            raise ValueError(f"fullres must be one of {', '.join(FULLRES)}, got {fullres!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(fp16, self.device)
        if bf16 and (runtime != "torch" or self.device.type != "cpu"):
            raise ValueError(f"bf16=True runs the torch runtime on the CPU, got runtime={runtime!r} on {self.device}")
        self.bf16 = bool(bf16)
        self.runtime, self.fullres, self.always_refine = runtime, fullres, always_refine
        self.graphs: OrderedDict[tuple[int, int, int, float], GraphedStep] = OrderedDict()
        if fullres == "fast" and (self.device.type != "cpu" or cuda_graphs or compile):
            raise ValueError(f"fullres='fast' runs on the CPU (no cuda_graphs= or compile=), got {self.device}")
        on_cuda = uses_cuda(self.device)
        # exact: ``_network`` is the whole network (fgr, pha out); fast: ``_coefficients`` stops at A, b
        self._network = self._coefficients = None
        if runtime.startswith("openvino"):
            self._load_openvino(backbone, model, weights, offline, threads)
        elif runtime == "onnxruntime":
            self._load_export(backbone, model, weights, offline, threads, cuda_graphs=cuda_graphs, compile=compile)
        else:
            self._load_torch(backbone, model, weights, offline, channels_last=channels_last, compile=compile)
            if self.device.type == "cpu":
                keep_freed_frames()
            if cuda_graphs and not on_cuda:
                raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        self.cuda_graphs = self._network is not None and runtime == "torch" and (
            on_cuda if cuda_graphs is None else bool(cuda_graphs))
        if fullres == "fast":
            self.always_refine = True  # the coefficients are the refiner's, at every ratio
        # the CUDA path: a side stream for uploads and graph replays; cuDNN autotunes once per shape
        self._stream = torch.cuda.Stream(self.device) if on_cuda else None
        if on_cuda:
            torch.backends.cudnn.benchmark = True
        self._upload = Upload(self.device, self._stream)
        self._render_lock = threading.Lock()  # the render's buffers serve one call at a time
        self._tools = RenderTools(Download(), FastFullRes())

    def _load_export(self, backbone: str, model: MattingNetwork | None, weights: str | Path | None,
                     offline: bool | None, threads: int | None, *, cuda_graphs: bool | None, compile: bool) -> None:
        """The onnxruntime runtime: the official export (whole, or cut at the coefficients), one session."""
        if not (self.device.type == "cpu" and backbone == "mobilenetv3" and model is None and not cuda_graphs
                and not compile):
            raise ValueError("runtime='onnxruntime' runs the mobilenetv3 ONNX export on the CPU (fp32); it takes "
                             "no model=, cuda_graphs= or compile=")
        self.model, self.backbone, self.always_refine = None, backbone, True  # the export always refines
        if self.fullres == "fast":
            self._coefficients = OrtCoefficients(official_export(weights, offline), threads=threads)
        else:
            self._network = OrtMattingNetwork(weights, threads=threads, offline=offline)

    def _load_openvino(self, backbone: str, model: MattingNetwork | None, weights: str | Path | None,
                       offline: bool | None, threads: int | None) -> None:
        """The OpenVINO runtimes (fp32, bf16, int8): the official export cut at the coefficients, for the fast stage."""
        from ..assets import cache_dir
        from .openvino import OpenVinoCoefficients, available

        if not available():
            raise ValueError(f"runtime={self.runtime!r} needs the openvino package (pip install openvino)")
        if not (self.device.type == "cpu" and backbone == "mobilenetv3" and model is None and self.fullres == "fast"):
            raise ValueError(f"runtime={self.runtime!r} runs the mobilenetv3 ONNX export's network half on the CPU "
                             "with the fast full-resolution stage (fullres='fast'); it takes no model=")
        self.model, self.backbone, self.always_refine = None, backbone, True
        precision = {"openvino-bf16": "bf16", "openvino-int8": "int8"}.get(self.runtime, "fp32")
        self._coefficients = OpenVinoCoefficients(official_export(weights, offline), precision=precision,
                                                  threads=threads, cache_dir=cache_dir() / "openvino")

    def _load_torch(self, backbone: str, model: MattingNetwork | None, weights: str | Path | None,
                    offline: bool | None, *, channels_last: bool, compile: bool) -> None:
        """The torch runtime: our network on the device, in the dtype (shared with other engines)."""
        if model is None:
            model = get_model(backbone, weights=weights, device=self.device, dtype=self.dtype, offline=offline)
        else:
            model = model.eval().to(device=self.device, dtype=self.dtype)
        if self.bf16:  # a copy: the fp32 model is shared with other engines (get_model's cache)
            model = copy.deepcopy(model).low_res_to(torch.bfloat16)
        if channels_last:
            # measured on CPU (BENCHMARKS.md) and the layout cuDNN's fp16 tensor-core kernels want
            model = model.to(memory_format=torch.channels_last)
        self.model, self.backbone = model, model.backbone_name
        if self.fullres == "fast":
            self._coefficients = self._torch_coefficients
        else:
            self._network = torch.compile(model, dynamic=False) if compile else model

    def _torch_coefficients(self, small: np.ndarray, rec: list) -> tuple[np.ndarray, np.ndarray, list]:
        """The model's coefficients output for ``small`` float32 ``[B,3,h,w]``, as NumPy arrays."""
        x = torch.from_numpy(small).contiguous(memory_format=torch.channels_last)
        a, b, *rec = self.model.coefficients(x, *rec)
        return a.contiguous().numpy(), b.contiguous().numpy(), rec

    @property
    def settling(self) -> bool:
        """Whether the engine is still preparing for a shape it has just seen (OpenVINO compiling its static model
        on a background thread): frame times now are not what that shape will cost, so the governor skips them."""
        return bool(getattr(self._coefficients, "compiling", False))

    def new_state(self, ratio: float | str | None = "auto") -> StreamState:
        """A fresh stream state (``"auto"``: RVM's recommended ratio for whatever frame size comes)."""
        return StreamState(ratio)

    def plan(self, background: str | Background = "green", *, threshold: float | None = None,
             rgba: bool = True) -> RenderPlan:
        """A :class:`~rvm_live.engine.render.RenderPlan` for ``render``: ``background`` a spec (a colour, an image
        or video file, ``blur[:RADIUS]``, ``transparent``) made on this engine's device, or a Background."""
        if isinstance(background, str):
            background = parse_background(background, device=self.device, dtype=self.dtype)
        return RenderPlan(background, threshold, rgba)

    # ----- per call -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, frames: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor,
              states: Sequence[StreamState]) -> Matte:
        """Matte one uint8 ``H x W x 3`` frame per stream, advancing each stream's state; returns the
        :class:`~rvm_live.engine.render.Matte` to render. A state whose frame size changes is reset first (and
        its ``"auto"`` ratio recomputed). Streams of one size and ratio share a network call; others (another
        size, or a ratio set by ``set_ratio``) run in calls of their own."""
        one = isinstance(frames, (np.ndarray, Tensor)) and frames.ndim == 3  # a lone frame: one stream
        images = [_check_frame(image) for image in ([frames] if one else list(frames))]
        if not images:
            raise ValueError("no frames given")
        if len(states) != len(images):
            raise ValueError(f"{len(images)} frames but {len(states)} states")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a state appears twice in one call")
        groups: dict[tuple[int, int, float], list[int]] = {}
        for i, (image, state) in enumerate(zip(images, states)):
            height, width = image.shape[:2]
            if state.prepare(height, width):
                log.debug("stream state (re)sized for %dx%d frames, ratio %s", width, height, state.ratio)
            groups.setdefault((height, width, state.ratio), []).append(i)
        rows = [self._call([images[i] for i in members], [states[i] for i in members], ratio, members)
                for (_, _, ratio), members in groups.items()]
        return Matte(rows, streams=len(images), count=len(images))

    @torch.inference_mode()
    def infer_clip(self, frames: np.ndarray | Tensor, state: StreamState) -> Matte:
        """Matte ``T`` consecutive uint8 frames ``[T,H,W,3]`` of one stream, carrying ``state`` through them
        (one network call along time on the torch path); the matte holds ``T`` frames of that one stream."""
        if frames.ndim != 4:
            raise ValueError(f"a clip must be T x H x W x 3, got shape {tuple(frames.shape)}")
        count = len(frames)
        if self._network is None:  # the fast path runs one frame per call
            rows = [self.infer([frame], [state]).rows[0] for frame in frames]
            for t, row in enumerate(rows):
                row.slots = [t]
            return Matte(rows, streams=1, count=count)
        src = self.upload(frames)
        fgr, pha = self.run_clip(src.unsqueeze(0), state)
        return Matte([DeviceRows([0] * count, list(range(count)), fgr[0], pha[0], src)], streams=1, count=count)

    def render(self, matte: Matte, plans: Sequence[RenderPlan]) -> list[Picture]:
        """Blend and bring to the host: one :class:`~rvm_live.engine.render.Picture` per frame of ``matte``, in
        order, each rendered as its stream's plan says (``plans``: one per stream of the ``infer`` call)."""
        if len(plans) != matte.streams:
            raise ValueError(f"{matte.streams} streams but {len(plans)} render plans")
        pictures: list[Picture | None] = [None] * matte.count
        with self._render_lock, torch.inference_mode():
            for rows in matte.rows:
                rows.render(plans, pictures, self._tools)
        return pictures  # type: ignore[return-value]

    def upload(self, images: Sequence[np.ndarray | Tensor] | np.ndarray | Tensor) -> Tensor:
        """uint8 frames → ``[B,3,H,W]`` in the model dtype on the device (uint8 crosses the bus)."""
        return to_model_input(self._upload.to_device(as_frames(images)), self.dtype)

    @torch.inference_mode()
    def run_clip(self, src: Tensor, state: StreamState) -> tuple[Tensor, Tensor]:
        """Run ``T`` consecutive frames of one stream, ``src [1,T,3,H,W]`` (device, model dtype, 0..1), in
        one call along time, carrying ``state``; returns ``fgr [1,T,3,H,W]`` and ``pha [1,T,1,H,W]``."""
        if src.ndim != 5 or src.shape[0] != 1:
            raise ValueError(f"run_clip takes [1,T,3,H,W], got {tuple(src.shape)}")
        if self._network is None:
            raise ValueError("run_clip needs fullres='exact' (the fast path's network stops at the coefficients)")
        state.prepare(src.shape[-2], src.shape[-1])
        if self.runtime == "onnxruntime":  # the export runs one time step per call
            outs = [self._forward(src[:, t], [state], state.ratio) for t in range(src.shape[1])]
            return torch.stack([f for f, _ in outs], 1), torch.stack([p for _, p in outs], 1)
        return self._forward(src, [state], state.ratio)

    def _call(self, images: list[np.ndarray | Tensor], states: list[StreamState], ratio: float,
              members: list[int]) -> Rows:
        """One network call for streams of one size and ratio."""
        if self.fullres == "fast":
            arrays = [image if isinstance(image, np.ndarray) else image.cpu().numpy() for image in images]
            frames = np.ascontiguousarray(arrays[0])[None] if len(arrays) == 1 else np.stack(arrays)  # 1: no copy
            floats = frames.astype(np.float32)  # made once: the network's input and the refiner's guide
            a, b, rec = self._coefficients(downsample(floats, ratio), stack_states(states))
            _store(states, rec)
            return CoefficientRows(members, members, frames, floats, a, b)
        frames = as_frames(images)
        if not self.cuda_graphs:
            src = to_model_input(self._upload.to_device(frames), self.dtype)
            fgr, pha = self._forward(src, states, ratio)
            return DeviceRows(members, members, fgr, pha, src)
        fgr, pha, src = self._replay(frames, states, ratio)
        # the graph's outputs are overwritten by its next replay, which may come before this matte is rendered
        return DeviceRows(members, members, fgr.clone(), pha.clone(), src.clone())

    def _forward(self, src: Tensor, states: Sequence[StreamState], ratio: float) -> tuple[Tensor, Tensor]:
        """Eager network call over the batch of ``states`` (``src`` ``[B,3,H,W]`` or ``[1,T,3,H,W]``); the new
        state goes back to each stream (into its graph slot when it holds one, so that graph stays valid)."""
        fgr, pha, *rec = self._network(src, *stack_states(states), downsample_ratio=ratio,
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

    def _replay(self, frames: Tensor, states: Sequence[StreamState], ratio: float) -> tuple[Tensor, Tensor, Tensor]:
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
        return fgr, pha, graph.src


def _store(states: Sequence[StreamState], rec: list) -> None:
    """Give each stream its row of a batched call's new state."""
    for b, state in enumerate(states):
        state.rec = [r[b:b + 1] for r in rec] if len(states) > 1 else list(rec)


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
