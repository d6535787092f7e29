"""A cheap full-resolution stage for live use on the CPU: guided-filter refine, composite and uint8 in one go.

The network engines in :mod:`rvm_live.engine.lowres` stop at the low-resolution coefficients ``A, b``.
:class:`FastFullRes` applies them at the frame's size with OpenCV's SIMD kernels, on the uint8 frame,
straight into the uint8 output, with the refiner's constants folded in at low resolution:

    fgr·255 = (A_rgb + 1)↑ · X + (255·b_rgb)↑          X: the uint8 frame as float, 0..255
    pha     = (A_α / 765)↑ · (X_r + X_g + X_b) + b_α↑   ↑: bilinear upsample (half-pixel centres)
    image   = fgr_u8 · pha + bg_u8 · (1 - pha)          one ``blendLinear`` pass, uint8 in and out

Every float step matches the official export to float rounding; the only approximation is that ``fgr`` is
rounded to uint8 before the blend (≤ 1 level of 255 in the output). Measured fidelity and speed are in
BENCHMARKS.md. It is the render stage of an ``Engine(fullres="fast")`` (rvm_live/engine/render.py).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import cv2
import numpy as np
import torch

from ..compositing.backgrounds import Background, BlurBackground, ColorBackground

log = logging.getLogger(__name__)

BackgroundLike = Background | tuple[int, int, int] | np.ndarray | None


class FullRes(NamedTuple):
    """Composited frames: ``image`` ``[B,H,W,3]`` (transparent background: ``[B,H,W,4]``) and ``alpha``
    ``[B,H,W]``, both uint8 on the host."""

    image: np.ndarray
    alpha: np.ndarray


def _resize(low: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)


BACKGROUNDS_KEPT = 16  # converted backgrounds cached (one per stream in use is what matters)


class FastFullRes:
    """Refine + composite + uint8 conversion for ``[B,H,W,3]`` uint8 frames from low-resolution ``A, b``.

    It caches each background converted to a uint8 picture, so one instance serves one thread at a time."""

    def __init__(self) -> None:
        self._backgrounds: dict[int, tuple[object, np.ndarray]] = {}  # id(background) -> (key, picture)

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
                 *, threshold: float | None = None, rgba: bool = True, floats: np.ndarray | None = None) -> FullRes:
        """Composite ``frames`` ``[B,H,W,3]`` uint8 with their coefficients ``(A, b)`` (``[B,4,h,w]``) over
        ``background``: a :class:`~rvm_live.compositing.backgrounds.Background`, an RGB tuple, an ``H x W x 3`` uint8
        picture, or None (transparent). A transparent background gives RGBA, or with ``rgba=False`` the
        foreground alone (RGB). ``threshold``: a hard mask ``pha > threshold`` for the blend and the returned
        alpha (as ``composite``). ``floats``: ``frames`` as float32, if already made."""
        if threshold is not None and not 0 <= threshold < 1:
            raise ValueError(f"threshold {threshold!r}: expected 0 <= threshold < 1")
        a, b = coeffs
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [B,H,W,3], got {frames.dtype} {list(frames.shape)}")
        if a.shape != b.shape or a.ndim != 4 or a.shape[:2] != (frames.shape[0], 4):
            raise ValueError(f"coefficients must be two [B,4,h,w] arrays, got {list(a.shape)} and {list(b.shape)}")
        images, alphas = [], []
        for i, (frame, fa, fb) in enumerate(zip(frames, a, b)):
            image, alpha = self._one(frame, fa, fb, background, None if floats is None else floats[i], threshold, rgba)
            images.append(image)
            alphas.append(alpha)
        if len(images) == 1:  # the live case: no copy
            return FullRes(images[0][None], alphas[0][None])
        return FullRes(np.stack(images), np.stack(alphas))

    def _one(self, frame: np.ndarray, a: np.ndarray, b: np.ndarray, background: BackgroundLike,
             x: np.ndarray | None, threshold: float | None, rgba: bool) -> tuple[np.ndarray, np.ndarray]:
        fgr, pha = self.matte(frame, a, b, x)
        if threshold is not None:
            cv2.threshold(pha, threshold, 1.0, cv2.THRESH_BINARY, dst=pha)
        fgr8 = cv2.add(fgr, 0.0, dtype=cv2.CV_8U)  # saturating, rounded
        alpha = cv2.convertScaleAbs(pha, alpha=255.0)  # pha >= 0 here, so the abs is a no-op
        bg = self._background(background, frame)
        if bg is None:
            return (cv2.merge([fgr8, alpha]) if rgba else fgr8), alpha
        return cv2.blendLinear(fgr8, bg, pha, 1.0 - pha), alpha

    def _background(self, background: BackgroundLike, frame: np.ndarray) -> np.ndarray | None:
        """``background`` as an ``H x W x 3`` uint8 picture (cached while it does not change), or None."""
        height, width = frame.shape[:2]
        if background is None or (isinstance(background, Background) and background.transparent):
            return None
        if isinstance(background, np.ndarray):
            if background.shape != frame.shape or background.dtype != np.uint8:
                raise ValueError(f"background picture must be uint8 {list(frame.shape)}, got "
                                 f"{background.dtype} {list(background.shape)}")
            return background
        if isinstance(background, ColorBackground):
            background = background.rgb
        if isinstance(background, tuple):
            return self._cached(background, (background, height, width),
                                lambda: np.full((height, width, 3), background, np.uint8))
        if isinstance(background, BlurBackground):  # the frame itself, blurred: new every frame, made in uint8
            return background.picture(frame)
        # image and video backgrounds: the device tensor, converted once per new tensor
        tensor = background.for_frame(torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0))
        return self._cached(background, tensor, lambda: np.ascontiguousarray(
            tensor[0].float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()))

    def _cached(self, background: object, key: object, make) -> np.ndarray:
        """The picture for ``background`` while its ``key`` (colour and size, or the tensor it gave) stays."""
        held = self._backgrounds.get(id(background))
        # a colour's key is a value; a tensor's is itself (held here, so its identity cannot be reused)
        if held is not None and (held[0] is key or (isinstance(key, tuple) and held[0] == key)):
            return held[1]
        if len(self._backgrounds) >= BACKGROUNDS_KEPT:
            self._backgrounds.pop(next(iter(self._backgrounds)))
        picture = make()
        self._backgrounds[id(background)] = (key, picture)
        return picture
