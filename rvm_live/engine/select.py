"""The daemon's engine for a Config: one ``Engine`` shared by every stream, or, for ``fullres = "fast"`` on
the CPU, a ``FusedEngine`` whose per-stream states run the network to low-resolution coefficients and blend
at full resolution in one OpenCV pass (rvm_live/engine/fullres.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Config
from .core import Engine
from .loading import pick_engine, resolve_device

if TYPE_CHECKING:
    from .fullres import Begun, FastMatter

log = logging.getLogger(__name__)


class FusedEngine:
    """The CPU's fast full-resolution path: ``complete(begin(image, state), state, background, threshold)`` per
    stream gives the output picture directly (no device tensors); the states are ``FastMatter`` objects."""

    fused = True

    def __init__(self, config: Config) -> None:
        from .fullres import fast_matter

        self._make = fast_matter
        self._config = config
        first = fast_matter(config)
        self._first: FastMatter | None = first
        self.device, self.dtype, self.backbone, self.engine = first.device, first.dtype, first.backbone, first.engine

    def new_state(self, downsample: Any = "auto") -> FastMatter:
        if self._first is not None and self._first._ratio_setting == downsample:
            first, self._first = self._first, None  # the one built to learn device and dtype
            return first
        return self._make(self._config.replace(downsample=downsample))

    @staticmethod
    def begin(image: np.ndarray, state: FastMatter) -> Begun:
        """A frame of the stream whose state is ``state``, in two halves: the network (in frame order, on the
        inference thread) ..."""
        return state.begin(image)

    @staticmethod
    def complete(begun: Begun, state: FastMatter, background: Any,
                 threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
        """... then the full-resolution stage, which may overlap the next frame's network (another thread):
        ``(image H x W x 3|4, alpha H x W)`` uint8."""
        return state.complete(begun, background, threshold)


def fullres_mode(config: Config, *, live: bool) -> str:
    """``exact`` or ``fast`` for ``config.fullres``: auto is fast on the CPU when every stream is live (the fast
    stage matches exact to 1e-4 and doubles the frames there), exact for file jobs (every frame is kept, so
    speed buys nothing a user sees) and on CUDA (where the exact stage is already cheap)."""
    if config.fullres != "auto":
        return config.fullres
    return "fast" if live and resolve_device(config.device).type == "cpu" else "exact"


def build_engine(config: Config, *, live: bool = False) -> Engine | FusedEngine:
    """The engine ``config`` asks for (backbone, device, dtype, kind), loaded once for all streams; ``live``:
    whether every stream's source is live (decides ``fullres = "auto"``)."""
    if fullres_mode(config, live=live) == "fast":
        return FusedEngine(config)
    kind = pick_engine(config.engine, backbone=config.backbone, weights=config.weights,
                       device=resolve_device(config.device), live=live)
    engine = Engine(config.backbone, weights=config.weights, device=config.device, fp16=config.fp16, engine=kind,
                    compile=config.compile, offline=config.offline or None)
    log.info("inference: %s on %s (%s engine)", config.backbone, engine.device, engine.engine)
    return engine
