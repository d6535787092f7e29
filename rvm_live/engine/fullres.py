"""A cheap full-resolution stage for live use on the CPU: guided-filter refine, composite and uint8 in one go.

The network engines in :mod:`rvm_live.engine.lowres` stop at the low-resolution coefficients ``A, b``.
:class:`FastFullRes` applies them at the frame's size with OpenCV's SIMD kernels, on the uint8 frame,
straight into the uint8 output, with the refiner's constants folded in at low resolution:

    fgr·255 = (A_rgb + 1)↑ · X + (255·b_rgb)↑          X: the uint8 frame as float, 0..255
    pha     = (A_α / 765)↑ · (X_r + X_g + X_b) + b_α↑   ↑: bilinear upsample (half-pixel centres)
    image   = fgr_u8 · pha + bg_u8 · (1 - pha)          one ``blendLinear`` pass, uint8 in and out

Every float step matches the official export to float rounding; the only approximation is that ``fgr`` is
rounded to uint8 before the blend (≤ 1 level of 255 in the output). Measured fidelity and speed are in
BENCHMARKS.md. :class:`FastMatter` is the streaming object the pipeline uses with ``fullres = "fast"``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from ..compositing.backgrounds import Background, ColorBackground
from .lowres import OrtCoefficients, TorchCoefficients, downsample

log = logging.getLogger(__name__)

BackgroundLike = Background | tuple[int, int, int] | np.ndarray | None


class FullRes(NamedTuple):
    """Composited frames: ``image`` ``[B,H,W,3]`` (transparent background: ``[B,H,W,4]``) and ``alpha``
    ``[B,H,W]``, both uint8 on the host."""

    image: np.ndarray
    alpha: np.ndarray


def _resize(low: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)


class FastFullRes:
    """Refine + composite + uint8 conversion for ``[B,H,W,3]`` uint8 frames from low-resolution ``A, b``.

    ``threshold``: a hard mask ``pha > threshold`` for the blend and the returned alpha (as ``composite``)."""

    def __init__(self, *, threshold: float | None = None) -> None:
        if threshold is not None and not 0 <= threshold < 1:
            raise ValueError(f"threshold {threshold!r}: expected 0 <= threshold < 1")
        self.threshold = threshold
        self._bg_key: object = None
        self._bg_image: np.ndarray | None = None

    def matte(self, frame: np.ndarray, a: np.ndarray, b: np.ndarray,
              x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One frame (``H x W x 3`` uint8) and its ``A, b`` (``[4,h,w]``) → ``fgr`` ``H x W x 3`` float32
        in 0..255 (not clamped) and ``pha`` ``H x W`` float32 clamped to 0..1. ``x``: the frame as float32,
        when the caller already has it."""
        height, width = frame.shape[:2]
        if x is None:
            x = frame.astype(np.float32)
        fgr = _resize(np.ascontiguousarray(b[:3].transpose(1, 2, 0)) * np.float32(255), height, width)
        cv2.accumulateProduct(x, _resize(np.ascontiguousarray((a[:3] + 1).transpose(1, 2, 0)), height, width), fgr)
        total = cv2.transform(x, np.ones((1, 3), np.float32))
        pha = _resize(np.ascontiguousarray(b[3]), height, width)
        cv2.accumulateProduct(total, _resize(a[3] * np.float32(1 / 765), height, width), pha)
        cv2.threshold(pha, 1.0, 1.0, cv2.THRESH_TRUNC, dst=pha)
        cv2.max(pha, 0.0, dst=pha)
        return fgr, pha

    def __call__(self, frames: np.ndarray, coeffs: tuple[np.ndarray, np.ndarray], background: BackgroundLike,
                 *, floats: np.ndarray | None = None) -> FullRes:
        """Composite ``frames`` ``[B,H,W,3]`` uint8 with their coefficients ``(A, b)`` (``[B,4,h,w]``) over
        ``background``: a :class:`~rvm_live.compositing.backgrounds.Background`, an RGB tuple, an ``H x W x 3`` uint8
        picture, or None (transparent: RGBA out). ``floats``: ``frames`` as float32, if already made."""
        a, b = coeffs
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [B,H,W,3], got {frames.dtype} {list(frames.shape)}")
        if a.shape != b.shape or a.ndim != 4 or a.shape[:2] != (frames.shape[0], 4):
            raise ValueError(f"coefficients must be two [B,4,h,w] arrays, got {list(a.shape)} and {list(b.shape)}")
        images, alphas = [], []
        for i, (frame, fa, fb) in enumerate(zip(frames, a, b)):
            image, alpha = self._one(frame, fa, fb, background, None if floats is None else floats[i])
            images.append(image)
            alphas.append(alpha)
        if len(images) == 1:  # the live case: no copy
            return FullRes(images[0][None], alphas[0][None])
        return FullRes(np.stack(images), np.stack(alphas))

    def _one(self, frame: np.ndarray, a: np.ndarray, b: np.ndarray, background: BackgroundLike,
             x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        fgr, pha = self.matte(frame, a, b, x)
        if self.threshold is not None:
            cv2.threshold(pha, self.threshold, 1.0, cv2.THRESH_BINARY, dst=pha)
        fgr8 = cv2.add(fgr, 0.0, dtype=cv2.CV_8U)  # saturating, rounded
        alpha = cv2.convertScaleAbs(pha, alpha=255.0)  # pha >= 0 here, so the abs is a no-op
        bg = self._background(background, frame)
        if bg is None:
            rgba = cv2.cvtColor(fgr8, cv2.COLOR_RGB2RGBA)
            rgba[..., 3] = alpha
            return rgba, alpha
        return cv2.blendLinear(fgr8, bg, pha, 1.0 - pha), alpha

    def _background(self, background: BackgroundLike, frame: np.ndarray) -> np.ndarray | None:
        """``background`` as an ``H x W x 3`` uint8 picture (cached while it does not change), or None."""
        height, width = frame.shape[:2]
        if background is None or getattr(background, "transparent", False):
            return None
        if isinstance(background, np.ndarray):
            if background.shape != frame.shape or background.dtype != np.uint8:
                raise ValueError(f"background picture must be uint8 {list(frame.shape)}, got "
                                 f"{background.dtype} {list(background.shape)}")
            return background
        if isinstance(background, ColorBackground):
            background = background.rgb
        if isinstance(background, tuple):
            key: object = (background, height, width)
            if key != self._bg_key:
                self._bg_key, self._bg_image = key, np.full((height, width, 3), background, np.uint8)
            return self._bg_image
        # image, video and blur backgrounds: the device tensor, converted once per new tensor
        src = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0)
        tensor = background.for_frame(src)
        if tensor is not self._bg_key:
            image = tensor[0].float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
            self._bg_key, self._bg_image = tensor, np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        return self._bg_image


class Begun(NamedTuple):
    """A frame whose network half is done: the frame, the same as float32, and its low-resolution ``A, b``."""

    image: np.ndarray
    floats: np.ndarray
    coeffs: tuple[np.ndarray, np.ndarray]


class FastMatter:
    """Streaming matting with the fast full-resolution stage (CPU): uint8 frame in (``begin``), composite out
    (``complete``).

    Holds the recurrent state like :class:`~rvm_live.engine.matter.Matter` (reset on a new frame size or on
    request) and exposes what the pipeline reads from one (``device``, ``dtype``, ``engine``, ``backbone``,
    ``ratio``, ``reset``)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, backbone: str = "mobilenetv3", *, engine: str = "onnxruntime",
                 weights: str | Path | None = None, downsample_ratio: float | str | None = "auto",
                 threads: int | None = None, offline: bool | None = None) -> None:
        from .matter import check_ratio, get_model

        if downsample_ratio not in (None, "auto"):
            check_ratio(downsample_ratio)  # type: ignore[arg-type]
        self._ratio_setting = downsample_ratio
        self.backbone, self.engine = backbone, engine
        if engine == "onnxruntime":
            if backbone != "mobilenetv3":
                raise ValueError("the onnxruntime engine runs the mobilenetv3 ONNX export only")
            if weights is None:
                from ..assets import fetch
                from ..weights import MOBILENETV3_ONNX_MIRROR

                weights = fetch(MOBILENETV3_ONNX_MIRROR, offline=offline)
            self.network: OrtCoefficients | TorchCoefficients = OrtCoefficients(weights, threads=threads)
        elif engine == "torch":
            model = get_model(backbone, weights=weights, device=self.device, dtype=self.dtype, offline=offline)
            self.network = TorchCoefficients(model.to(memory_format=torch.channels_last))
        else:
            raise ValueError(f"engine must be torch or onnxruntime, got {engine!r}")
        self.fullres = FastFullRes()
        self.size: tuple[int, int] | None = None
        self.ratio: float | None = None
        self.state = self.network.initial_state()

    def reset(self) -> None:
        """Forget the recurrent state (new scene, source restart, or on request)."""
        self.state = self.network.initial_state()

    def _prepare(self, height: int, width: int) -> None:
        from .matter import auto_downsample_ratio

        if self.size != (height, width):
            if self.size is not None:
                log.info("frame size changed %s -> %s; resetting recurrent state", self.size, (height, width))
            self.reset()
            self.size = (height, width)
            setting = self._ratio_setting
            self.ratio = auto_downsample_ratio(height, width) if setting in (None, "auto") else float(setting)

    def set_ratio(self, ratio: float) -> None:
        """Change the internal resolution (the quality governor), carrying the recurrent state resized."""
        from .state import resize_state, state_sizes

        if self.size is not None and ratio != self.ratio:
            self.state = resize_state(self.state, state_sizes(*self.size, ratio))
        self.ratio = ratio

    def coefficients(self, image: np.ndarray, floats: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on one uint8 ``H x W x 3`` frame (``floats``: the same as float32, if made),
        carrying the state: low-resolution ``A, b``."""
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 H x W x 3, got {image.dtype} {list(image.shape)}")
        self._prepare(image.shape[0], image.shape[1])
        small = downsample((image if floats is None else floats)[None], self.ratio)
        a, b, self.state = self.network(small, self.state)
        return a, b

    def begin(self, image: np.ndarray) -> Begun:
        """The network's half of a step (it carries the state, so steps begin in frame order)."""
        floats = image.astype(np.float32)  # made once: the network's input and the refiner's guide
        return Begun(image, floats, self.coefficients(image, floats))

    def complete(self, begun: Begun, background: BackgroundLike,
                 threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The full-resolution half: ``(image H x W x 3|4, alpha H x W)`` uint8. It reads no state, so it may run
        on another thread while the next frame begins (one thread at a time: it caches the background)."""
        self.fullres.threshold = threshold
        out = self.fullres(begun.image[None], begun.coeffs, background, floats=begun.floats[None])
        return out.image[0], out.alpha[0]


def fast_matter(config) -> FastMatter:
    """The :class:`FastMatter` for a pipeline ``Config`` with ``fullres = "fast"`` (CPU only)."""
    from ..errors import ConfigError
    from .matter import pick_engine, resolve_device

    device = resolve_device("cpu" if config.device == "auto" else config.device)
    if device.type != "cpu":
        raise ConfigError(f"fullres: 'fast' runs on the CPU; use fullres = 'exact' on {device}")
    engine = pick_engine(config.engine, backbone=config.backbone, weights=config.weights, device=device)
    matter = FastMatter(config.backbone, engine=engine, weights=config.weights, downsample_ratio=config.downsample,
                        offline=config.offline or None)
    log.info("inference: %s on cpu (%s engine, fast full-resolution stage)", config.backbone, engine)
    return matter
