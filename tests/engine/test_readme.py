"""The README's Python API runs as written on a machine without CUDA, and its claims hold."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_snippet() -> str:
    """The code block under "## Python API"."""
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_snippet_runs_as_written_on_the_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" must not need a GPU
    scope: dict = {}
    exec(compile(python_snippet(), str(README), "exec"), scope)  # noqa: S102 - the README's own code
    image, mask, video = scope["image"], scope["mask"], scope["video"]
    assert image.shape == (8, 144, 176, 3) and mask.shape == (8, 144, 176)
    background = mask < 0.02
    assert float(background.float().mean()) > 0.1  # a person and a background
    assert float(image[background][:, 2].mean()) > 0.9 > float(image[background][:, 0].mean()) + 0.5  # blue
    fgr, pha = scope["fgr"], scope["pha"]
    assert fgr.shape == (1, 3, 144, 176) and pha.shape == (1, 1, 144, 176)  # NCHW, as it says
    cam1, cam2, out = scope["cam1"], scope["cam2"], scope["out"]
    assert (cam1.ratio, cam2.ratio) == (0.25, 1.0) and out.pha.shape == (2, 1, 144, 176)
    green, transparent = scope["pictures"]
    assert green.image.shape == (144, 176, 3) and transparent.image.shape == (144, 176, 4)
    assert green.image.dtype == np.uint8 and len(video) == 8


def test_matting_default_backbone_offline_says_in_one_line_which_file_goes_where(tmp_path, monkeypatch,
                                                                                carphone_frames):
    import torch

    from rvm_live.engine.matter import matting
    from rvm_live.errors import WeightsError

    monkeypatch.setenv("RVM_LIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("RVM_LIVE_OFFLINE", "1")
    frames = torch.from_numpy(carphone_frames[:2]).float() / 255
    with pytest.raises(WeightsError) as err:
        matting(frames)  # the ComfyUI contract's default: resnet50
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert "rvm_resnet50.pth" in message and str(tmp_path) in message


def test_bg_color_takes_rgb_tuples_and_names_bad_ones(mobilenet, carphone_frames):
    import torch

    from rvm_live.engine.matter import matting

    frames = torch.from_numpy(carphone_frames[:2]).float() / 255
    by_tuple, _ = matting(frames, model=mobilenet, bg_color=(255, 0, 255), device="cpu")
    by_name, _ = matting(frames, model=mobilenet, bg_color="#ff00ff", device="cpu")
    assert torch.equal(by_tuple, by_name)
    for bad in ((255, 0), (0, 0, 256), (0.5, 0, 0)):
        with pytest.raises(ValueError, match="bg_color"):
            matting(frames, model=mobilenet, bg_color=bad, device="cpu")
