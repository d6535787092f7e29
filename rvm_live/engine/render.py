"""What ``Engine.infer`` hands to ``Engine.render``, and the render itself.

A :class:`Matte` is the network's result for some frames, kept where the engine made it: on the torch path the
``fgr, pha, src`` tensors on the device (:class:`DeviceRows`), on the CPU's fast path the low-resolution
coefficients ``A, b`` with the frames (:class:`CoefficientRows`). Rendering blends each frame over its stream's
background as its :class:`RenderPlan` says and brings the picture to the host: one composite and one (pinned)
download per network call on the device, the OpenCV full-resolution pass (rvm_live/engine/fullres.py) on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..compositing.backgrounds import Background, composite
from .fullres import FastFullRes
from .transfer import Download


class RenderPlan(NamedTuple):
    """How one stream's frames are rendered: over ``background``, with the hard mask ``alpha > threshold``
    (``None``: soft alpha), and ``rgba``: whether the stream's outputs take an alpha channel (decided once per
    stream from its sinks). A transparent background gives RGBA when ``rgba``, else the foreground alone
    (RGB): exactly what the outputs use comes down."""

    background: Background
    threshold: float | None = None
    rgba: bool = True


class Picture(NamedTuple):
    """A rendered frame on the host: ``image`` uint8 ``H x W x 3`` (RGBA: ``x 4``) and ``alpha`` uint8 ``H x W``
    where it came at no cost (the CPU), else ``None`` (only the picture leaves a GPU)."""

    image: np.ndarray
    alpha: np.ndarray | None


class RenderTools(NamedTuple):
    """An engine's host-side helpers for rendering: one at a time (the engine holds a lock around them)."""

    download: Download
    fullres: FastFullRes


@dataclass
class Rows:
    """Results of one network call: row ``r`` is a frame of stream ``streams[r]`` (an index into the
    ``infer`` call's frames and the ``render`` call's plans) and goes to ``slots[r]`` of what render returns."""

    streams: list[int]
    slots: list[int]

    def render(self, plans: Sequence[RenderPlan], out: list[Picture | None], tools: RenderTools) -> None:
        """Put each row's picture into ``out[slot]``."""
        raise NotImplementedError


@dataclass
class DeviceRows(Rows):
    """``fgr [R,3,H,W]``, ``pha [R,1,H,W]`` and ``src [R,3,H,W]`` (the frames as the network saw them), on the
    engine's device in its dtype, owned by this matte (a later ``infer`` does not overwrite them)."""

    fgr: Tensor
    pha: Tensor
    src: Tensor

    def render(self, plans: Sequence[RenderPlan], out: list[Picture | None], tools: RenderTools) -> None:
        rows = [plans[s] for s in self.streams]
        first = rows[0]
        if all((p.threshold, p.rgba, p.background.transparent) == (first.threshold, first.rgba,
                                                                   first.background.transparent) for p in rows):
            # the usual case: one composite and one download for the whole call
            result = composite(self.fgr, self.pha, [p.background for p in rows], self.src,
                               threshold=first.threshold, rgba=first.rgba)
            images, alphas = tools.download(result.image), _host_alpha(result.alpha)
            if len(rows) == 1:
                images, alphas = images[None], None if alphas is None else alphas[None]
            for r, slot in enumerate(self.slots):
                out[slot] = Picture(images[r], None if alphas is None else alphas[r])
            return
        for r, (plan, slot) in enumerate(zip(rows, self.slots)):
            one = slice(r, r + 1)
            result = composite(self.fgr[one], self.pha[one], plan.background, self.src[one],
                               threshold=plan.threshold, rgba=plan.rgba)
            out[slot] = Picture(tools.download(result.image), _host_alpha(result.alpha))


def _host_alpha(alpha: Tensor) -> np.ndarray | None:
    # no output reads Frame.alpha, so it is kept only where it costs no copy (on the CPU, a view)
    return alpha.numpy() if alpha.device.type == "cpu" else None


@dataclass
class CoefficientRows(Rows):
    """The CPU fast path: ``frames`` uint8 ``[R,H,W,3]`` as the network saw them, the same as float32
    (``floats``: the network's input and the refiner's guide, made once) and the low-resolution ``A, b``
    (``[R,4,h,w]``)."""

    frames: np.ndarray
    floats: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def render(self, plans: Sequence[RenderPlan], out: list[Picture | None], tools: RenderTools) -> None:
        for r, (stream, slot) in enumerate(zip(self.streams, self.slots)):
            plan, one = plans[stream], slice(r, r + 1)
            result = tools.fullres(self.frames[one], (self.a[one], self.b[one]), plan.background,
                                   threshold=plan.threshold, rgba=plan.rgba, floats=self.floats[one])
            out[slot] = Picture(result.image[0], result.alpha[0])


class Matte:
    """What ``Engine.infer`` returns: the network's result for ``count`` frames of ``streams`` streams (one frame
    per stream, or ``count`` frames of one stream from ``infer_clip``), in one or more network calls (streams
    of different sizes or ratios run separately). Valid until rendered, whatever the engine runs meanwhile."""

    def __init__(self, rows: list[Rows], *, streams: int, count: int) -> None:
        self.rows, self.streams, self.count = rows, streams, count

    @property
    def fgr(self) -> Tensor:
        """The foregrounds ``[N,3,H,W]`` (NCHW, 0..1, on the device), frames in order (torch path only)."""
        return self._gather("fgr")

    @property
    def pha(self) -> Tensor:
        """The alphas ``[N,1,H,W]`` (NCHW, 0..1, on the device), frames in order (torch path only)."""
        return self._gather("pha")

    @property
    def src(self) -> Tensor:
        """The frames as the network saw them, ``[N,3,H,W]`` (NCHW, 0..1, on the device) (torch path only)."""
        return self._gather("src")

    def _gather(self, name: str) -> Tensor:
        if not all(isinstance(rows, DeviceRows) for rows in self.rows):
            raise TypeError(f"this matte holds low-resolution coefficients (fullres='fast'), not {name}: render it")
        if len(self.rows) == 1 and self.rows[0].slots == list(range(self.count)):
            return getattr(self.rows[0], name)  # one network call in frame order: no copy
        parts: list[Tensor | None] = [None] * self.count
        for rows in self.rows:
            tensor = getattr(rows, name)
            for r, slot in enumerate(rows.slots):
                parts[slot] = tensor[r:r + 1]
        if len({tuple(p.shape) for p in parts}) > 1:
            raise ValueError(f"frames of different sizes: {name} cannot be one tensor; render the matte instead")
        return torch.cat(parts)
