"""rvm-live: real-time background matting with Robust Video Matting.

The model API (``Matter``, ``matting``, ``load_model``, ...) is imported on first use: ``import rvm_live`` stays
light, so the daemon installs its signal handlers before torch loads and an output's writer process never
loads torch at all.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, MediaError, PipelineError, RvmLiveError, SinkError, SourceError, WeightsError

__version__ = "0.1.0"

_LAZY = {
    "Matter": "engine.matter", "matting": "engine.matter", "auto_downsample_ratio": "engine.state",
    "recommended_ratio": "engine.state", "MattingNetwork": "model.network", "find_weights": "weights",
    "load_model": "weights", "Engine": "engine", "RenderPlan": "engine", "StreamState": "engine",
    "Daemon": "runtime.daemon",
}

__all__ = [
    "ConfigError",
    "Daemon",
    "Engine",
    "MattingNetwork",
    "Matter",
    "MediaError",
    "PipelineError",
    "RenderPlan",
    "RvmLiveError",
    "SinkError",
    "SourceError",
    "StreamState",
    "WeightsError",
    "auto_downsample_ratio",
    "find_weights",
    "load_model",
    "matting",
    "recommended_ratio",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rvm_live' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
