"""Optional int8: the low-resolution network quantized statically on real frames (a tiny calibration here; the
pinned recipe's figures are in BENCHMARKS.md)."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest

from rvm_live.tools import quantize
from rvm_live.tools.quantize import evaluate, int8_lowres_path, quantize_lowres, recipe_digest


@pytest.mark.slow
def test_quantized_network_still_mattes_and_is_cached(tmp_path, official_onnx_path, carphone_frames, monkeypatch):
    frames = np.stack([cv2.resize(f, (128, 96)) for f in carphone_frames[60:64]])  # not the evaluated frames
    path = quantize_lowres(official_onnx_path, tmp_path / "int8.onnx", frames)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    evaluated = np.stack([cv2.resize(f, (128, 96)) for f in carphone_frames[:3]])
    report = evaluate(path, official_onnx_path, evaluated, 1.0)
    assert 0 < report["mean_abs_alpha"] < 0.15  # int8 moves alpha a little; a broken model moves it a lot
    assert report["cpu_ms_fp32"] > 0 and report["cpu_ms_int8"] > 0

    monkeypatch.setenv("RVM_LIVE_CACHE", str(tmp_path))
    digest = recipe_digest(official_onnx_path)
    cached = tmp_path / f"{official_onnx_path.stem}.lowres-int8-{digest}.onnx"
    path.replace(cached)
    assert int8_lowres_path(official_onnx_path) == cached  # reused, not made again
    monkeypatch.setitem(quantize.RECIPE, "per_channel", False)
    assert recipe_digest(official_onnx_path) != digest  # another recipe never reuses the file
