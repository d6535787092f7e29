"""rvm-live: real-time background matting with Robust Video Matting."""

from __future__ import annotations

__version__ = "0.1.0"
