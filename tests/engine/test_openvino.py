"""The OpenVINO engine's network half against onnxruntime on the official export (real clip, real weights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'rvm-live[openvino]')")

from rvm_live.engine.fullres import FastFullRes  # noqa: E402
from rvm_live.engine.lowres import OrtCoefficients, downsample  # noqa: E402
from rvm_live.engine.openvino import OpenVinoCoefficients, supports_bf16  # noqa: E402
from rvm_live.engine.state import resize_state, state_sizes  # noqa: E402


def _alphas(runner, frames: np.ndarray, ratio: float, *, settle_after: int | None = None) -> np.ndarray:
    """Alpha of each frame through ``runner`` with its state carried (``settle_after``: wait for the static
    models to compile after that many frames, so the rest run on them)."""
    state, out, finish = runner.initial_state(), [], FastFullRes()
    for i, frame in enumerate(frames):
        a, b, state = runner(downsample(frame[None], ratio), state)
        out.append(finish.matte(frame, a[0], b[0])[1])
        if settle_after is not None and i == settle_after:
            assert runner.wait_compiled(60)
    return np.stack(out)


@pytest.fixture(scope="module")
def frames360(carphone_frames) -> np.ndarray:
    return np.stack([cv2.resize(f, (640, 360), interpolation=cv2.INTER_LINEAR) for f in carphone_frames[:24]])


def test_fp32_matches_onnxruntime_on_dynamic_and_static_models(official_onnx_path, frames360):
    reference = _alphas(OrtCoefficients(official_onnx_path, threads=2), frames360, 0.6)
    runner = OpenVinoCoefficients(official_onnx_path, precision="fp32", threads=2)
    got = _alphas(runner, frames360, 0.6, settle_after=3)
    assert runner._static, "no static model was compiled for the steady shape"
    assert np.abs(got - reference).max() < 1e-3  # every frame, before and after the swap to the static model
    assert reference.std() > 0.2  # a real matte (person and background), not a constant


def test_a_new_size_is_served_at_once_and_the_state_carries_over(official_onnx_path, frames360):
    runner = OpenVinoCoefficients(official_onnx_path, precision="fp32", threads=2)
    ort = OrtCoefficients(official_onnx_path, threads=2)
    states = [runner.initial_state(), ort.initial_state()]
    for ratio in (0.6, 0.6, 0.4, 0.4):  # a ratio change mid-stream (as the governor makes), state resized
        states = [resize_state(s, state_sizes(360, 640, ratio)) for s in states]
        small = downsample(frames360[:1], ratio)
        a1, _, states[0] = runner(small, states[0])
        a2, _, states[1] = ort(small, states[1])
        assert a1.shape == a2.shape and np.abs(a1 - a2).max() < 1e-3


def test_refuses_a_bad_precision(official_onnx_path):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'int4'"):
        OpenVinoCoefficients(official_onnx_path, precision="int4")


@pytest.mark.skipif(not supports_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX")
def test_bf16_stays_close_to_fp32(official_onnx_path, frames360):
    reference = _alphas(OrtCoefficients(official_onnx_path, threads=2), frames360, 0.6)
    got = _alphas(OpenVinoCoefficients(official_onnx_path, precision="bf16", threads=2), frames360, 0.6)
    diff = np.abs(got - reference)
    assert 0 < diff.mean() < 0.02  # bf16 really ran (not fp32) and stays a usable matte (BENCHMARKS.md)
