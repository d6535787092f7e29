"""Matting-quality metrics, scaled as in RVM's tables (its ``evaluation/evaluate_lr.py``), plus the composite's
error in the person's edge band.

Every alpha here is float in 0..1 (RVM's evaluation reads 8-bit PNGs and divides by 255; the benchmark does the
same with uint8 alphas). Per frame:

- MAD ×1e3: mean |pred − true|.
- MSE ×1e3: mean (pred − true)².
- Grad ×1e-3: Σ (|∇G pred| − |∇G true|)² / 1000, ∇G the first derivatives of a Gaussian (σ = 1.4), each alpha
  min-max normalised first. A *sum* over pixels, as RVM's: it grows with the frame size, so compare it only
  between rows of one size.
- dtSSD ×1e2: √(mean ((pred_t − pred_t−1) − (true_t − true_t−1))²), per pair of consecutive frames (RVM also
  counts a 0 for each clip's first frame; we average over pairs only).
- Edge error, in 8-bit levels: mean |composite − true composite| over the colour channels of the pixels within
  :data:`EDGE_RADIUS` px (square) of a true alpha strictly between 0 and 1, both composites laid over the flat
  colour :data:`EDGE_BACKGROUND`: what a user sees at the person's outline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

GRAD_SIGMA = 1.4
EDGE_RADIUS = 3
EDGE_BACKGROUND = (0, 177, 64)  # chroma green, a typical replacement background


def _check_pair(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"pred and true differ in shape: {pred.shape} != {true.shape}")


def mad(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute difference ×1e3."""
    _check_pair(pred, true)
    return float(np.abs(pred.astype(np.float64) - true).mean() * 1e3)


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error ×1e3."""
    _check_pair(pred, true)
    return float(((pred.astype(np.float64) - true) ** 2).mean() * 1e3)


def gauss_kernels(sigma: float = GRAD_SIGMA, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """``(g, dg)``: the 1-D Gaussian and its derivative, scaled so that the 2-D filter ``outer(g, dg)`` has unit
    L2 norm; the support is RVM's (9 taps at σ 1.4)."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dg = -x * g / sigma**2
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


_KERNELS = gauss_kernels()


def gauss_gradient(alpha: np.ndarray) -> np.ndarray:
    """Gradient magnitude of ``alpha`` with the Gaussian-derivative filters (replicated border). The 2-D filter
    is separable, so two 1-D passes per direction give what RVM's 9x9 ``filter2D`` gives."""
    g, dg = _KERNELS
    image = alpha.astype(np.float64)
    gx = cv2.sepFilter2D(image, cv2.CV_64F, dg, g, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(image, cv2.CV_64F, g, dg, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx**2 + gy**2)


def minmax(alpha: np.ndarray) -> np.ndarray:
    """``alpha`` stretched to 0..1 (all zeros when flat), as ``cv2.normalize(..., NORM_MINMAX)``."""
    lo, hi = float(alpha.min()), float(alpha.max())
    if hi - lo <= np.finfo(np.float64).eps:
        return np.zeros(alpha.shape, np.float64)
    return (alpha.astype(np.float64) - lo) / (hi - lo)


def grad(pred: np.ndarray, true: np.ndarray, true_gradient: np.ndarray | None = None) -> float:
    """Gradient error ×1e-3 (a sum over the frame). ``true_gradient``: ``gauss_gradient(minmax(true))`` if
    already computed (it is the same for every setting)."""
    _check_pair(pred, true)
    if true_gradient is None:
        true_gradient = gauss_gradient(minmax(true))
    return float(((gauss_gradient(minmax(pred)) - true_gradient) ** 2).sum() / 1e3)


def dtssd(pred: np.ndarray, pred_prev: np.ndarray, true: np.ndarray, true_prev: np.ndarray) -> float:
    """Temporal coherence error ×1e2 of one pair of consecutive frames."""
    _check_pair(pred, true)
    _check_pair(pred_prev, true_prev)
    change = (pred.astype(np.float64) - pred_prev) - (true.astype(np.float64) - true_prev)
    return float(math.sqrt((change**2).mean()) * 1e2)


def edge_band(true: np.ndarray, radius: int = EDGE_RADIUS) -> np.ndarray:
    """Boolean mask: pixels within ``radius`` px (Chebyshev) of one whose true alpha is strictly in (0, 1)."""
    unknown = ((true > 0) & (true < 1)).astype(np.uint8)
    return cv2.dilate(unknown, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0


def composite(alpha: np.ndarray, fgr: np.ndarray, background: tuple[int, int, int] = EDGE_BACKGROUND) -> np.ndarray:
    """``alpha·fgr + (1 − alpha)·background`` in float64 (8-bit levels); ``fgr`` ``H x W x 3`` in 0..255."""
    a = alpha.astype(np.float64)[..., None]
    return a * fgr + (1 - a) * np.asarray(background, np.float64)


def edge_error_sum(pred: np.ndarray, pred_fgr: np.ndarray, true: np.ndarray, true_fgr: np.ndarray,
                   band: np.ndarray) -> tuple[float, int]:
    """``(Σ |composite error| over the band's pixels and channels, number of values summed)`` for one frame,
    so that frames pool into one mean."""
    _check_pair(pred, true)
    diff = np.abs(composite(pred[band], pred_fgr[band]) - composite(true[band], true_fgr[band]))
    return float(diff.sum()), int(diff.size)


class ClipScore:
    """Accumulates one setting's metrics over clips: ``add(pred, pred_fgr, true, true_fgr)`` per frame,
    ``new_clip()`` between clips; ``result()`` the means."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {"mad": [], "mse": [], "grad": [], "dtssd": []}
        self.edge_sum, self.edge_count = 0.0, 0
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def new_clip(self) -> None:
        self._prev = None

    def add(self, pred: np.ndarray, pred_fgr: np.ndarray, true: np.ndarray, true_fgr: np.ndarray, *,
            true_gradient: np.ndarray | None = None, band: np.ndarray | None = None) -> None:
        """One frame: alphas float 0..1 ``H x W``, foregrounds ``H x W x 3`` in 0..255."""
        self.values["mad"].append(mad(pred, true))
        self.values["mse"].append(mse(pred, true))
        self.values["grad"].append(grad(pred, true, true_gradient))
        if self._prev is not None:
            self.values["dtssd"].append(dtssd(pred, self._prev[0], true, self._prev[1]))
        self._prev = (pred, true)
        total, count = edge_error_sum(pred, pred_fgr, true, true_fgr, edge_band(true) if band is None else band)
        self.edge_sum += total
        self.edge_count += count

    def result(self) -> dict[str, float]:
        """Means over every frame (dtSSD: every pair) and the edge error pooled over every band pixel."""
        out = {name: _mean(values) for name, values in self.values.items()}
        out["edge"] = self.edge_sum / self.edge_count if self.edge_count else float("nan")
        return out


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
