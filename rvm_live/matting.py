"""Matting APIs: ``Matter`` (streaming, one frame at a time, owns the recurrent state) and ``matting()``
(a whole clip at once, the ComfyUI-compatible function)."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .compositing import parse_color
from .config import ENGINES  # torch is the default; onnxruntime an opt-in CPU backend (BENCHMARKS.md)
from .cuda_graphs import GraphedStep, to_model_input
from .model.network import MattingNetwork
from .ort_engine import OrtMattingNetwork
from .weights import BACKBONES, load_model

log = logging.getLogger(__name__)

# RVM's documented ratios for portraits (0.375 at 720p, 0.25 at 1080p, 0.125 at 4K) all put the long
# side of the network's internal image at 480 px; inputs up to 512 px run at full size.
AUTO_INTERNAL_SIZE = 480
AUTO_FULL_SIZE_LIMIT = 512


def auto_downsample_ratio(height: int, width: int) -> float:
    """RVM's recommended downsample ratio for a frame size (internal long side 480 px, never upscaled)."""
    long_side = max(height, width)
    return 1.0 if long_side <= AUTO_FULL_SIZE_LIMIT else AUTO_INTERNAL_SIZE / long_side


def seed_downsample_ratio(height: int, width: int) -> float:
    """The ComfyUI seed's rule: ``min(512 / max(H, W), 1)``."""
    return min(512 / max(height, width), 1.0)


def check_ratio(ratio: float) -> float:
    """Validate a downsample ratio: a number with 0 < r <= 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"downsample_ratio must be a number, got {type(ratio).__name__}")
    if not 0 < ratio <= 1:
        raise ValueError(f"downsample_ratio must satisfy 0 < r <= 1, got {ratio}")
    return float(ratio)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise the named device (validated)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(fp16: bool | None, device: torch.device) -> torch.dtype:
    """fp16 applies on CUDA; asking for it elsewhere falls back to fp32 with one warning."""
    if fp16 is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if fp16 and device.type != "cuda":
        warnings.warn(f"fp16 is only used on CUDA; running in fp32 on {device}", RuntimeWarning, stacklevel=3)
        return torch.float32
    return torch.float16 if fp16 else torch.float32


def pick_engine(engine: str, *, backbone: str, device: torch.device, weights: str | Path | None = None) -> str:
    """Resolve ``"auto"``: onnxruntime where it is faster and able (CPU, MobileNetV3, the official ONNX export
    or an .onnx file, onnxruntime installed; see BENCHMARKS.md), torch everywhere else."""
    if engine != "auto":
        return engine
    if device.type != "cpu" or backbone != "mobilenetv3":
        return "torch"
    if weights is not None and Path(weights).suffix != ".onnx":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


@functools.lru_cache(maxsize=4)
def _cached_model(backbone: str, weights: str | None, device: torch.device, dtype: torch.dtype,
                  offline: bool | None) -> MattingNetwork:
    return load_model(backbone, weights=weights, offline=offline).to(device=device, dtype=dtype)


def get_model(backbone: str, *, weights: str | Path | None = None, device: torch.device,
              dtype: torch.dtype, offline: bool | None = None) -> MattingNetwork:
    """A ready (folded, eval, on ``device`` in ``dtype``) model, shared between callers."""
    return _cached_model(backbone, str(weights) if weights is not None else None, device, dtype, offline)


class Matter:
    """Streaming matting: owns the model, device, dtype, downsample ratio and the four recurrent states.

    ``step()`` takes one RGB uint8 frame and returns ``(fgr, pha)`` tensors on the device; the state
    carries to the next call and is reset automatically when the frame size changes.

    On CUDA the model runs in fp16 and channels_last memory; frames go through a pinned host buffer and
    cross the bus as uint8 on a dedicated stream, and ``step()`` replays a CUDA graph captured per frame
    size, whose outputs are overwritten by the next ``step()`` (``cuda_graphs=False`` turns graphs off).
    ``compile=True`` wraps the network in ``torch.compile`` (slow first frames; opt-in)."""

    def __init__(self, backbone: str = "mobilenetv3", *, model: MattingNetwork | None = None,
                 weights: str | Path | None = None, device: str | torch.device | None = None,
                 fp16: bool | None = None, downsample_ratio: float | str | None = "auto",
                 always_refine: bool = False, cuda_graphs: bool | None = None, compile: bool = False,
                 channels_last: bool = True, engine: str = "torch", offline: bool | None = None) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(fp16, self.device)
        if downsample_ratio not in (None, "auto"):
            check_ratio(downsample_ratio)  # type: ignore[arg-type]
        self._ratio_setting = downsample_ratio
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine == "onnxruntime":
            self._init_onnxruntime(backbone, model, weights, cuda_graphs, compile, offline)
            return
        if model is None:
            model = get_model(backbone, weights=weights, device=self.device, dtype=self.dtype, offline=offline)
        else:
            model = model.eval().to(device=self.device, dtype=self.dtype)
        if channels_last:
            # measured on CPU (BENCHMARKS.md) and the layout cuDNN's fp16 tensor-core kernels want
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.backbone = getattr(model, "backbone_name", backbone)
        self.engine = "torch"
        self.always_refine = always_refine
        self._network = torch.compile(model, dynamic=False) if compile else model
        on_cuda = self.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        self.cuda_graphs = on_cuda if cuda_graphs is None else bool(cuda_graphs)
        self._stream = torch.cuda.Stream(self.device) if on_cuda else None
        if on_cuda:
            # a stream keeps one frame size, so cuDNN's per-shape autotuning is paid once per size
            torch.backends.cudnn.benchmark = True
        self._init_state()

    def _init_state(self) -> None:
        # the frame ``step()`` last matted, as the network saw it ([1,3,H,W], model dtype, on the device):
        # compositing needs it (blur backgrounds) and must not upload the frame a second time
        self.last_src: torch.Tensor | None = None
        self._pinned: torch.Tensor | None = None
        self._uploaded = torch.cuda.Event() if self.device.type == "cuda" else None
        self._graph: GraphedStep | None = None
        self.size: tuple[int, int] | None = None
        self.ratio: float | None = None
        self.state: list[torch.Tensor | None] = [None] * 4

    def _init_onnxruntime(self, backbone: str, model: MattingNetwork | None, weights: str | Path | None,
                          cuda_graphs: bool | None, compile: bool, offline: bool | None) -> None:
        if self.device.type != "cpu" or backbone != "mobilenetv3" or model is not None or cuda_graphs or compile:
            raise ValueError("engine='onnxruntime' runs the mobilenetv3 ONNX export on the CPU (fp32); it takes "
                             "no model=, cuda_graphs= or compile=")
        self.model = None
        self.backbone, self.engine, self.always_refine = backbone, "onnxruntime", True
        self._network = OrtMattingNetwork(weights, offline=offline)
        self.cuda_graphs, self._stream = False, None
        self._init_state()

    @torch.inference_mode()  # the state tensors are inference tensors: zeroing them needs the same mode
    def reset(self) -> None:
        """Forget the recurrent state (new scene, source restart, or on request)."""
        self.state = [None] * 4
        if self._graph is not None:
            self._graph.reset()  # on the current stream: eager steps there and the next replay both see it
            self.state = list(self._graph.state)

    def _prepare(self, height: int, width: int) -> None:
        if self.size != (height, width):
            if self.size is not None:
                log.info("frame size changed %s -> %s; resetting recurrent state", self.size, (height, width))
            self._graph = None  # a graph holds one frame size
            self.reset()
            self.size = (height, width)
            setting = self._ratio_setting
            self.ratio = auto_downsample_ratio(height, width) if setting in (None, "auto") else float(setting)

    @staticmethod
    def _as_tensor(image: np.ndarray | torch.Tensor, *, frames: bool = False) -> torch.Tensor:
        """A uint8 ``H x W x 3`` frame (``frames=True``: ``T x H x W x 3``) as a tensor, or a named error."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
            image = torch.from_numpy(np.ascontiguousarray(image))
        elif image.dtype != torch.uint8:
            raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
        ndim, what = (4, "T x H x W x 3") if frames else (3, "H x W x 3")
        if image.ndim != ndim or image.shape[-1] != 3 or 0 in image.shape:
            raise ValueError(f"frame must be {what}, got shape {tuple(image.shape)}")
        return image

    def _to_device_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 frame(s) → device, ready for the current stream (CUDA: from the host via the reused pinned
        buffer, copied on the matting stream)."""
        if self.device.type != "cuda":
            return image
        if image.device.type == "cuda":  # made on the current stream: stay there, no cross-stream hazard
            return image.to(self.device)
        with torch.cuda.stream(self._stream):  # allocated on the matting stream, which writes it first
            out = torch.empty(image.shape, dtype=torch.uint8, device=self.device)
        self._upload_pinned(image, out)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        out.record_stream(current)  # used on the current stream: not recycled by the matting stream before
        return out

    def upload(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB uint8 ``H x W x 3`` → ``[1, 3, H, W]`` in the model dtype on the device (uint8 crosses the bus)."""
        return to_model_input(self._to_device_uint8(self._as_tensor(image)), self.dtype)

    @torch.inference_mode()
    def infer(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on ``[B,3,H,W]`` or ``[1,T,3,H,W]`` (device, dtype, 0..1), carrying state."""
        self._prepare(src.shape[-2], src.shape[-1])
        fgr, pha, *state = self._network(src, *self.state, downsample_ratio=self.ratio,
                                         always_refine=self.always_refine)
        graph = self._graph
        if graph is not None and state[0].shape == graph.state[0].shape:
            # a chunk between graph steps (a bursty file decoder): it ran eagerly from the graph's state
            # buffers and writes back into them, so the graph stays valid and is never re-captured
            for buffer, new in zip(graph.state, state):
                buffer.copy_(new)
            state = list(graph.state)
        elif graph is not None:  # a batch the graph does not hold: continue eagerly without it
            self._graph = None
        self.state = state
        return fgr, pha

    @torch.inference_mode()
    def step(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matte one RGB uint8 frame: returns ``fgr [1,3,H,W]`` and ``pha [1,1,H,W]`` on the device."""
        if not self.cuda_graphs:
            self.last_src = self.upload(image)
            return self.infer(self.last_src)
        image = self._as_tensor(image)
        self._prepare(image.shape[0], image.shape[1])
        if self._graph is None:
            self._capture()
        graph = self._graph
        current = torch.cuda.current_stream(self.device)
        if image.device.type == "cuda":
            graph.frame.copy_(image)  # on the stream that made ``image``; the last replay is already before it
        else:
            self._upload_pinned(image, graph.frame)
        # the caller is done with the previous outputs (the replay overwrites them) and any eager state
        # write-back or reset queued on the current stream comes first
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            fgr, pha = graph.replay()
        current.wait_stream(self._stream)
        self.last_src = graph.src
        return fgr, pha

    def _upload_pinned(self, image: torch.Tensor, out: torch.Tensor) -> None:
        """Host frame → the graph's frame buffer on the matting stream, via the reused pinned buffer. Only
        the matting stream touches ``out`` (the previous replay read it there), so the copy needs no wait
        and overlaps the current stream's work on the previous frame."""
        self._uploaded.synchronize()  # the previous copy has left the pinned buffer (at once if never recorded)
        if self._pinned is None or self._pinned.shape != image.shape:
            self._pinned = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
        self._pinned.copy_(image)
        with torch.cuda.stream(self._stream):
            out.copy_(self._pinned, non_blocking=True)
        self._uploaded.record(self._stream)

    def _capture(self) -> None:
        height, width = self.size
        graph = GraphedStep(self._network, height=height, width=width, dtype=self.dtype, ratio=self.ratio,
                            always_refine=self.always_refine, device=self.device, stream=self._stream)
        if any(s is not None for s in self.state):  # came from eager steps: carry their state in, on the
            # current stream where those steps ran and the graph's zeroing was queued (replays wait for it)
            for buffer, s in zip(graph.state, self.state):
                buffer.copy_(s)
        self._graph = graph
        self.state = list(graph.state)

    @torch.inference_mode()
    def step_chunk(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matte ``T`` consecutive uint8 frames ``[T,H,W,3]`` in one network call along time (file
        throughput); returns ``fgr [T,3,H,W]`` and ``pha [T,1,H,W]``; the state carries on as with ``step``."""
        frames = self._to_device_uint8(self._as_tensor(frames, frames=True))
        src = frames.permute(0, 3, 1, 2).to(self.dtype).mul_(1 / 255)
        self.last_src = src
        fgr, pha = self.infer(src.unsqueeze(0))
        return fgr[0], pha[0]


def _validate_frames(video_frames: object) -> torch.Tensor:
    if isinstance(video_frames, np.ndarray):
        video_frames = torch.from_numpy(video_frames)
    if not isinstance(video_frames, torch.Tensor):
        raise TypeError(f"video_frames must be a torch.Tensor or numpy array, got {type(video_frames).__name__}")
    if video_frames.ndim != 4 or video_frames.shape[-1] != 3:
        raise ValueError(f"video_frames must be [N,H,W,3], got shape {tuple(video_frames.shape)}")
    if not video_frames.is_floating_point():
        raise TypeError(f"video_frames must be float in 0..1, got dtype {video_frames.dtype}")
    if video_frames.shape[0] == 0:
        raise ValueError("video_frames is empty (N = 0)")
    return video_frames


def matting(video_frames: torch.Tensor | np.ndarray, backbone: str = "resnet50", fp16: bool = True,
            bg_color: str = "green", batch_size: int = 4, *, downsample_ratio: float | None = None,
            device: str | torch.device | None = None, threshold: float | None = None,
            weights: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Matte a clip: ``[N,H,W,3]`` float 0..1 → ``(image [N,H,W,3], mask [N,H,W])`` float32 on the CPU.

    Frames go through the network ``batch_size`` at a time *along time*, with the recurrent state carried
    across chunks, so the result does not depend on ``batch_size``. ``mask`` is the soft alpha, or the
    hard mask ``alpha > threshold`` when ``threshold`` is given (the composite then uses it too)."""
    frames = _validate_frames(video_frames)
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threshold is not None and (isinstance(threshold, bool) or not 0 <= float(threshold) < 1):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    rgb = parse_color(bg_color)
    n, h, w, _ = frames.shape
    ratio = seed_downsample_ratio(h, w) if downsample_ratio is None else check_ratio(downsample_ratio)
    matter = Matter(backbone, weights=weights, device=device, fp16=fp16, downsample_ratio=ratio)
    bg = torch.tensor(rgb, device=matter.device, dtype=torch.float32).view(1, 3, 1, 1) / 255
    images, masks = [], []
    for start in range(0, n, batch_size):
        chunk = frames[start:start + batch_size].to(matter.device, matter.dtype, non_blocking=True)
        fgr, pha = matter.infer(chunk.permute(0, 3, 1, 2).unsqueeze(0))
        fgr, pha = fgr[0].float(), pha[0].float()
        if threshold is not None:
            pha = (pha > threshold).float()
        images.append((fgr * pha + bg * (1 - pha)).permute(0, 2, 3, 1).cpu())
        masks.append(pha[:, 0].cpu())
    return torch.cat(images), torch.cat(masks)
