"""rvm-live: real-time background matting with Robust Video Matting."""

from __future__ import annotations

# OpenCV must be imported before PyAV: the other order makes cv2's GUI calls spin forever (PyAV #978).
import cv2  # noqa: F401  isort: skip

from .errors import ConfigError, MediaError, PipelineError, RvmLiveError, SinkError, SourceError, WeightsError
from .matting import Matter, auto_downsample_ratio, matting
from .model.network import MattingNetwork
from .weights import find_weights, load_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "MattingNetwork",
    "Matter",
    "MediaError",
    "PipelineError",
    "RvmLiveError",
    "SinkError",
    "SourceError",
    "WeightsError",
    "auto_downsample_ratio",
    "find_weights",
    "load_model",
    "matting",
]
