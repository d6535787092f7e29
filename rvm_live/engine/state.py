"""One stream's recurrent state: r1..r4, the frame size and the downsample ratio they belong to.

The network carries four ConvGRU states from frame to frame. They live at the network's *internal*
resolution (the frame scaled by the ratio), at 1/2, 1/4, 1/8 and 1/16 of it, so a new ratio needs the
state resized (:meth:`StreamState.set_ratio`), and a new frame size needs it forgotten (``reset``).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

# RVM's documented ratios for portraits (0.375 at 720p, 0.25 at 1080p, 0.125 at 4K) all put the long
# side of the network's internal image at 480 px; inputs up to 512 px run at full size.
RECOMMENDED_INTERNAL_SIZE = 480
RECOMMENDED_FULL_SIZE_LIMIT = 512
# RVM's own ``auto_downsample_ratio`` (its inference.py): the internal long side at most 512 px
AUTO_INTERNAL_SIZE = 512


def recommended_ratio(height: int, width: int) -> float:
    """RVM's documented ratio for a frame size (internal long side 480 px, never upscaled): what a daemon
    stream's ``downsample = "auto"`` runs at, and the top of the quality governor's ladder."""
    long_side = max(height, width)
    return 1.0 if long_side <= RECOMMENDED_FULL_SIZE_LIMIT else RECOMMENDED_INTERNAL_SIZE / long_side


def auto_downsample_ratio(height: int, width: int) -> float:
    """RVM's ``auto_downsample_ratio``: ``min(512 / max(H, W), 1)``; what ``matting()`` and the ComfyUI node run
    at when no ratio is given."""
    return min(AUTO_INTERNAL_SIZE / max(height, width), 1.0)


def ratio_for(setting: float | str, height: int, width: int) -> float:
    """The ratio a ``downsample`` setting means for frames of ``height x width``: ``"auto"`` is
    :func:`recommended_ratio`, a number is itself."""
    return recommended_ratio(height, width) if setting == "auto" else float(setting)


def check_ratio(ratio: float) -> float:
    """Validate a downsample ratio: a number with 0 < r <= 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"downsample_ratio must be a number, got {type(ratio).__name__}")
    if not 0 < ratio <= 1:
        raise ValueError(f"downsample_ratio must satisfy 0 < r <= 1, got {ratio}")
    return float(ratio)


def state_sizes(height: int, width: int, ratio: float) -> list[tuple[int, int]]:
    """Spatial sizes of r1..r4 for frames of ``height x width`` at ``ratio``: the internal image is
    ``floor(size * ratio)`` (how the network's bilinear downsampling rounds), then each encoder stage halves
    it, rounding up."""
    h, w = (height, width) if ratio == 1 else (int(height * ratio), int(width * ratio))
    sizes = []
    for _ in range(4):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def resize_state(rec: list[Any], sizes: list[tuple[int, int]]) -> list[Any]:
    """``rec`` (r1..r4, ``[B,C,h,w]`` torch tensors or NumPy arrays) resized bilinearly to ``sizes``. A GRU
    state is a smooth feature map, so resampling it keeps the stream's temporal memory across a ratio change.
    Entries that hold no state yet (``None``) stay."""
    out: list[Any] = []
    for r, size in zip(rec, sizes):
        if r is None or tuple(r.shape[-2:]) == size:
            out.append(r if r is None or isinstance(r, np.ndarray) else r.clone())
        elif isinstance(r, np.ndarray):  # the onnxruntime runtime keeps its state on the host
            b, c, h, w = r.shape
            planes = np.ascontiguousarray(r.reshape(b * c, h, w).transpose(1, 2, 0))  # cv2: H x W x channels
            moved = cv2.resize(planes, size[::-1], interpolation=cv2.INTER_LINEAR).reshape(*size, b * c)
            out.append(np.ascontiguousarray(moved.transpose(2, 0, 1)).reshape(b, c, *size))
        else:
            resized = F.interpolate(r.float(), size=size, mode="bilinear", align_corners=False).to(r.dtype)
            out.append(resized.contiguous(memory_format=torch.channels_last))
    return out


def stack_states(states: list[StreamState]) -> list[Any]:
    """r1..r4 of the streams stacked along the batch, for one network call (``None`` where every stream starts
    afresh; zeros for the fresh ones among carried streams). Torch tensors or NumPy arrays, as the runtime keeps
    them."""
    if len(states) == 1:
        return list(states[0].rec)
    out: list[Any] = []
    for i in range(4):
        parts = [s.rec[i] for s in states]
        like = next((p for p in parts if p is not None), None)
        if like is None:
            out.append(None)
        elif isinstance(like, np.ndarray):
            out.append(np.concatenate([np.zeros_like(like) if p is None else p for p in parts]))
        else:
            out.append(torch.cat([torch.zeros_like(like) if p is None else p for p in parts]))
    return out


class StreamState:
    """The recurrent state of one stream.

    ``size`` is ``(H, W)`` of the frames it belongs to (``None`` before the first frame), ``ratio`` the
    downsample ratio in use, ``ratio_setting`` what a new frame size gets (``"auto"``: RVM's recommended
    ratio, or a fixed ratio), ``rec`` r1..r4 (``None``: zeros; torch tensors, or NumPy arrays with the
    onnxruntime runtime). The engine owns what is in ``rec``: it may be views into a CUDA graph's buffers,
    valid until the engine runs this state again."""

    def __init__(self, downsample_ratio: float | str | None = "auto") -> None:
        if downsample_ratio is None:
            downsample_ratio = "auto"
        if downsample_ratio != "auto":
            downsample_ratio = check_ratio(downsample_ratio)  # type: ignore[arg-type]
        self.ratio_setting: float | str = downsample_ratio
        self.size: tuple[int, int] | None = None
        self.ratio: float | None = None
        self.rec: list[Tensor | None] = [None] * 4

    def reset(self) -> None:
        """Forget the recurrent state (new scene, source restart, or on request); size and ratio stay."""
        self.rec = [None] * 4

    def prepare(self, height: int, width: int) -> bool:
        """Take frames of ``height x width``: a new size resets the state and recomputes the ratio from
        ``ratio_setting``. Returns True when it did."""
        if self.size == (height, width):
            return False
        self.reset()
        self.size = (height, width)
        self.ratio = ratio_for(self.ratio_setting, height, width)
        return True

    def set_ratio(self, ratio: float) -> None:
        """Run at ``ratio`` from the next step on, carrying the state over (resized to the new internal
        size, not reset). ``ratio_setting`` is kept: a later change of frame size starts from it again."""
        ratio = check_ratio(ratio)
        if self.size is None:
            raise ValueError("set_ratio: the state has no frame size yet (step it once, or give "
                             "downsample_ratio when creating it)")
        if ratio != self.ratio:
            self.rec = resize_state(self.rec, state_sizes(*self.size, ratio))
            self.ratio = ratio

    def __repr__(self) -> str:
        held = "empty" if self.rec[0] is None else "carried"
        return f"StreamState(size={self.size}, ratio={self.ratio}, setting={self.ratio_setting!r}, {held})"
