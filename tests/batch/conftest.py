"""Fixtures for the batch tests: a small library of real clips (cut from the demo clip) and each clip's
reference output from a single ``rvm-live --source X -o Y`` run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest


def write_frames(path: Path, frames, rate: int = 30, crf: int = 20) -> str:
    """Encode ``frames`` (N x H x W x 3 uint8) as an H.264 MP4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        c.mux(stream.encode(None))
    return str(path)


def index_clip(path: Path, n: int, size: int = 64) -> str:
    """``n`` frames whose grey level rises with their index, losslessly coded: a decoded frame's level says which
    one it is (see ``frame_indices``)."""
    levels = np.linspace(16, 235, n).round().astype(np.uint8)
    return write_frames(path, [np.full((size, size, 3), level, np.uint8) for level in levels], crf=0)


def frame_indices(clip: str, images) -> list[int]:
    """Which frame of the ``index_clip`` ``clip`` each image is: the one whose decoded grey level is nearest."""
    with av.open(clip) as c:
        levels = np.array([f.to_ndarray(format="rgb24").mean() for f in c.decode(video=0)])
    return [int(np.abs(levels - image.mean()).argmin()) for image in images]


def rvm_live(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m rvm_live ARGS`` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "rvm_live", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def library(tmp_path_factory, carphone_frames):
    """``(folder, {relative name: reference output})``: two 40-frame talking-head clips, one in a sub-folder,
    each matted once by a plain ``rvm-live --source X -o Y``."""
    root = tmp_path_factory.mktemp("library")
    clips = {"a.mp4": write_frames(root / "in" / "a.mp4", carphone_frames[:40]),
             "sub/b.mp4": write_frames(root / "in" / "sub" / "b.mp4", carphone_frames[60:100])}
    references = {}
    for name, clip in clips.items():
        out = root / "reference" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        done = rvm_live("--source", clip, "-o", str(out), "-q")
        assert done.returncode == 0, done.stderr
        references[name] = str(out)
    return root / "in", references
