"""Fixtures for the batch tests: a small library of real clips (cut from the demo clip) and each clip's
reference output from a single ``rvm-live --source X -o Y`` run."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from helpers import run_cli, solid_frames, write_frames


def index_clip(path: Path, n: int, size: int = 64) -> str:
    """``n`` frames whose grey level rises with their index, losslessly coded: a decoded frame's level says which
    one it is (see ``frame_indices``)."""
    levels = np.linspace(16, 235, n).round().astype(np.uint8)
    return write_frames(path, solid_frames(levels, (size, size)), rate=30, crf=0)


def frame_indices(clip: str, images) -> list[int]:
    """Which frame of the ``index_clip`` ``clip`` each image is: the one whose decoded grey level is nearest."""
    with av.open(clip) as c:
        levels = np.array([f.to_ndarray(format="rgb24").mean() for f in c.decode(video=0)])
    return [int(np.abs(levels - image.mean()).argmin()) for image in images]


@pytest.fixture(scope="session")
def library(tmp_path_factory, carphone_frames):
    """``(folder, {relative name: reference output})``: two 40-frame talking-head clips, one in a sub-folder,
    each matted once by a plain ``rvm-live --source X -o Y``."""
    root = tmp_path_factory.mktemp("library")
    clips = {"a.mp4": write_frames(root / "in" / "a.mp4", carphone_frames[:40], rate=30, crf=20),
             "sub/b.mp4": write_frames(root / "in" / "sub" / "b.mp4", carphone_frames[60:100], rate=30, crf=20)}
    references = {}
    for name, clip in clips.items():
        out = root / "reference" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        done = run_cli("--source", clip, "-o", str(out), "-q", offline=False)
        assert done.returncode == 0, done.stderr
        references[name] = str(out)
    return root / "in", references
