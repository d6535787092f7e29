"""Builds the daemon's shared engine from a Config (a stand-in over ``Matter`` until the batched Engine lands:
one ``Matter`` per stream state, stepped one after the other)."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch

from .config import Config
from .fullres import FastMatter, fast_matter
from .matting import Matter, pick_engine, resolve_device

log = logging.getLogger(__name__)


class StepOutput(NamedTuple):
    fgr: torch.Tensor
    pha: torch.Tensor
    src: torch.Tensor


class MatterEngine:
    """``step(images, states)`` over states that are ``Matter`` objects sharing one model."""

    def __init__(self, first: Matter, make: Any = None) -> None:
        self._first, self._make = first, make
        self.device, self.dtype, self.backbone, self.engine = first.device, first.dtype, first.backbone, first.engine

    def new_state(self, downsample: Any = "auto") -> Matter:
        if self._first is not None and self._first._ratio_setting == downsample:
            first, self._first = self._first, None
            return first
        return self._make(downsample)

    def step(self, images: list[np.ndarray], states: list[Matter]) -> StepOutput:
        outs = [(*m.step(img), m.last_src) for img, m in zip(images, states)]
        return StepOutput(*(torch.cat(parts) for parts in zip(*outs)))

    def step_chunk(self, images: np.ndarray, state: Matter) -> StepOutput:
        fgr, pha = state.step_chunk(images)
        return StepOutput(fgr, pha, state.last_src)


class FusedEngine:
    """The CPU's fast full-resolution path (``fullres = "fast"``): per stream, the network gives low-resolution
    coefficients and one OpenCV pass refines, blends and converts (``matte``); no device tensors."""

    fused = True

    def __init__(self, config: Config) -> None:
        self._config = config
        first = fast_matter(config)
        self._first: FastMatter | None = first
        self.device, self.dtype, self.backbone, self.engine = first.device, first.dtype, first.backbone, first.engine

    def new_state(self, downsample: Any = "auto") -> FastMatter:
        if self._first is not None and self._first._ratio_setting == downsample:
            first, self._first = self._first, None
            return first
        return fast_matter(self._config.replace(downsample=downsample))

    @staticmethod
    def matte(image: np.ndarray, state: FastMatter, background: Any, threshold: float | None):
        """``(image H x W x 3|4, alpha H x W)`` uint8 for one frame of the stream whose state is ``state``."""
        return state.step(image, background, threshold)


def build_engine(config: Config) -> MatterEngine | FusedEngine:
    """The engine ``config`` asks for (backbone, device, dtype, engine kind), loaded once for all streams."""
    if config.fullres == "fast":
        return FusedEngine(config)
    engine = pick_engine(config.engine, backbone=config.backbone, weights=config.weights,
                         device=resolve_device(config.device))

    def make(downsample: Any) -> Matter:
        return Matter(config.backbone, weights=config.weights, device=config.device, fp16=config.fp16,
                      downsample_ratio=downsample, engine=engine, compile=config.compile,
                      offline=config.offline or None)

    first = make(config.downsample)
    log.info("inference: %s on %s (%s engine)", config.backbone, first.device, first.engine)
    return MatterEngine(first, make)
