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
from .model.network import MattingNetwork
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


@functools.lru_cache(maxsize=4)
def _cached_model(backbone: str, weights: str | None, device: torch.device, dtype: torch.dtype) -> MattingNetwork:
    return load_model(backbone, weights=weights).to(device=device, dtype=dtype)


def get_model(backbone: str, *, weights: str | Path | None = None, device: torch.device,
              dtype: torch.dtype) -> MattingNetwork:
    """A ready (folded, eval, on ``device`` in ``dtype``) model, shared between callers."""
    return _cached_model(backbone, str(weights) if weights is not None else None, device, dtype)


class Matter:
    """Streaming matting: owns the model, device, dtype, downsample ratio and the four recurrent states.

    ``step()`` takes one RGB uint8 frame and returns ``(fgr, pha)`` tensors on the device; the state
    carries to the next call and is reset automatically when the frame size changes."""

    def __init__(self, backbone: str = "mobilenetv3", *, model: MattingNetwork | None = None,
                 weights: str | Path | None = None, device: str | torch.device | None = None,
                 fp16: bool | None = None, downsample_ratio: float | str | None = "auto",
                 always_refine: bool = False) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(fp16, self.device)
        if downsample_ratio not in (None, "auto"):
            check_ratio(downsample_ratio)  # type: ignore[arg-type]
        self._ratio_setting = downsample_ratio
        if model is None:
            model = get_model(backbone, weights=weights, device=self.device, dtype=self.dtype)
        else:
            model = model.eval().to(device=self.device, dtype=self.dtype)
        self.model = model
        self.backbone = getattr(model, "backbone_name", backbone)
        self.always_refine = always_refine
        self.size: tuple[int, int] | None = None
        self.ratio: float | None = None
        self.state: list[torch.Tensor | None] = [None] * 4

    def reset(self) -> None:
        """Forget the recurrent state (new scene, source restart, or on request)."""
        self.state = [None] * 4

    def _prepare(self, height: int, width: int) -> None:
        if self.size != (height, width):
            if self.size is not None:
                log.info("frame size changed %s -> %s; resetting recurrent state", self.size, (height, width))
            self.reset()
            self.size = (height, width)
            setting = self._ratio_setting
            self.ratio = auto_downsample_ratio(height, width) if setting in (None, "auto") else float(setting)

    def upload(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB uint8 ``H x W x 3`` → ``[1, 3, H, W]`` in the model dtype on the device (uint8 crosses the bus)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"unexpected frame dtype: {image.dtype} != uint8")
            image = torch.from_numpy(np.ascontiguousarray(image))
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frame must be H x W x 3, got shape {tuple(image.shape)}")
        t = image.to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0)
        return t.to(self.dtype).div_(255)

    @torch.inference_mode()
    def infer(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on ``[B,3,H,W]`` or ``[1,T,3,H,W]`` (device, dtype, 0..1), carrying state."""
        self._prepare(src.shape[-2], src.shape[-1])
        fgr, pha, *state = self.model(src, *self.state, downsample_ratio=self.ratio,
                                      always_refine=self.always_refine)
        self.state = state
        return fgr, pha

    def step(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Matte one RGB uint8 frame: returns ``fgr [1,3,H,W]`` and ``pha [1,1,H,W]`` on the device."""
        with torch.inference_mode():
            return self.infer(self.upload(image))


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
