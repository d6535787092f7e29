"""The OpenVINO engine's network half against onnxruntime on the official export (real clip, real weights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")

from rvm_live.engine.fullres import FastFullRes  # noqa: E402
from rvm_live.engine.lowres import OrtCoefficients, downsample  # noqa: E402
from rvm_live.engine.openvino import OpenVinoCoefficients, supports_bf16  # noqa: E402
from rvm_live.engine.state import resize_state, state_sizes  # noqa: E402


def _alphas(runner, frames: np.ndarray, ratio: float, *, settle_after: int | None = None) -> np.ndarray:
    """Alpha of each frame through ``runner`` with its state carried (``settle_after``: wait for the static
    models to compile after that many frames, so the rest run on them)."""
    state, out, finish = [None] * 4, [], FastFullRes()
    for i, frame in enumerate(frames):
        a, b, state = runner(downsample(frame[None], ratio), state)
        out.append(finish.matte(frame, a[0], b[0])[1])
        if settle_after is not None and i == settle_after:
            assert runner.wait_compiled(60)
    return np.stack(out)


@pytest.fixture(scope="module")
def frames360(carphone_frames) -> np.ndarray:
    return np.stack([cv2.resize(f, (640, 360), interpolation=cv2.INTER_LINEAR) for f in carphone_frames[:24]])


@pytest.mark.slow
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
    states = [[None] * 4, [None] * 4]
    for ratio in (0.6, 0.6, 0.4, 0.4):  # a ratio change mid-stream (as the governor makes), state resized
        states = [resize_state(s, state_sizes(360, 640, ratio)) for s in states]  # None stays None
        small = downsample(frames360[:1], ratio)
        a1, _, states[0] = runner(small, states[0])
        a2, _, states[1] = ort(small, states[1])
        assert a1.shape == a2.shape and np.abs(a1 - a2).max() < 1e-3


def test_the_engine_says_it_is_settling_while_a_static_model_compiles(official_onnx_path, frames360, monkeypatch):
    """``compiling`` (and ``Engine.settling``, which the governor reads) is true from a new steady shape's first
    call until its static model is ready, and false otherwise: the compile is held on an event, not timed."""
    import threading

    from rvm_live.engine.core import Engine

    engine = Engine(runtime="openvino", fullres="fast", threads=2)
    runner = engine._coefficients
    release, real = threading.Event(), runner._compile

    def held(key):
        assert release.wait(60)
        real(key)

    monkeypatch.setattr(runner, "_compile", held)
    state = engine.new_state(0.4)
    engine.infer([frames360[0]], [state])  # a fresh stream's first frame: the dynamic model, nothing to compile
    assert not runner.compiling and not engine.settling
    engine.infer([frames360[1]], [state])  # the steady shape: its static model is compiled on another thread
    assert runner.compiling and engine.settling
    release.set()
    assert runner.wait_compiled(60) and not engine.settling and runner._static


def test_refuses_a_bad_precision(official_onnx_path):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, int8, got 'int4'"):
        OpenVinoCoefficients(official_onnx_path, precision="int4")


@pytest.mark.skipif(not supports_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX")
@pytest.mark.slow
def test_bf16_stays_close_to_fp32(official_onnx_path, frames360):
    reference = _alphas(OrtCoefficients(official_onnx_path, threads=2), frames360, 0.6)
    got = _alphas(OpenVinoCoefficients(official_onnx_path, precision="bf16", threads=2), frames360, 0.6)
    diff = np.abs(got - reference)
    assert 0 < diff.mean() < 0.02  # bf16 really ran (not fp32) and stays a usable matte (BENCHMARKS.md)


def _int8_ran(runner: OpenVinoCoefficients) -> bool:
    """Whether the compiled static model runs some convolutions on int8 kernels (OpenVINO's runtime graph)."""
    request = next(iter(runner._static.values()))
    model = request.get_compiled_model().get_runtime_model()
    return any(op.get_rt_info()["layerType"].astype(str) == "Convolution"
               and op.get_rt_info()["runtimePrecision"].astype(str) in ("i8", "u8") for op in model.get_ops())


@pytest.mark.slow
@pytest.mark.parametrize("int8_float, bound", [("f32", 0.004), ("bf16", 0.01)])
def test_int8_stays_close_to_fp32_and_runs_int8_kernels(official_onnx_path, frames360, int8_float, bound):
    if int8_float == "bf16" and not supports_bf16():
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX")
    reference = _alphas(OpenVinoCoefficients(official_onnx_path, precision="fp32", threads=2), frames360, 0.6)
    runner = OpenVinoCoefficients(official_onnx_path, precision="int8", threads=2, int8_float=int8_float)
    got = _alphas(runner, frames360, 0.6, settle_after=3)
    diff = np.abs(got - reference)
    # measured on the demo clip at 384x216 (BENCHMARKS.md): 0.0018 with fp32 float layers, 0.0066 with bf16;
    # quantizing the stem or the whole network instead moves it by 0.012
    assert 0 < diff.mean() < bound, diff.mean()
    assert _int8_ran(runner), "no convolution ran in int8"


@pytest.mark.slow
def test_the_engine_runs_openvino_int8_by_its_runtime_name(frames360):
    from rvm_live.engine import Engine

    engines = {name: Engine(runtime=name, fullres="fast", threads=2) for name in ("openvino", "openvino-int8")}
    assert engines["openvino-int8"]._coefficients.precision == "int8"
    states = {name: e.new_state(0.6) for name, e in engines.items()}
    alphas = {name: [] for name in engines}
    for frame in frames360[:8]:
        for name, e in engines.items():
            (picture,) = e.render(e.infer([frame], [states[name]]), [e.plan("transparent")])
            alphas[name].append(picture.alpha.astype(np.float32) / 255)
    diff = np.abs(np.stack(alphas["openvino-int8"]) - np.stack(alphas["openvino"]))
    assert 0 < diff.mean() < 0.01


@pytest.mark.slow
def test_the_engine_runs_openvino_behind_the_one_interface(frames360):
    from rvm_live.compositing.backgrounds import parse_background
    from rvm_live.engine import Engine
    from rvm_live.engine.render import RenderPlan

    engines = {name: Engine(runtime=name, fullres="fast") for name in ("onnxruntime", "openvino")}
    states = {name: [e.new_state(0.5), e.new_state(0.25)] for name, e in engines.items()}  # two streams, two ratios
    plans = [RenderPlan(parse_background("#203040")), RenderPlan(parse_background("transparent"), None, True)]
    for frame in frames360[:6]:
        got = {name: e.render(e.infer([frame, frame[:, ::-1].copy()], states[name]), plans)
               for name, e in engines.items()}
        for ours, theirs in zip(got["openvino"], got["onnxruntime"]):
            assert ours.image.shape == theirs.image.shape
            assert np.abs(ours.alpha.astype(int) - theirs.alpha.astype(int)).max() <= 1
    assert got["openvino"][1].image.shape[-1] == 4  # the transparent stream came down as RGBA


def test_openvino_is_refused_for_the_exact_stage_in_one_line():
    from rvm_live.engine import Engine

    with pytest.raises(ValueError, match="fast full-resolution stage"):
        Engine(runtime="openvino", fullres="exact")


@pytest.mark.slow
def test_a_live_run_on_openvino_bf16_names_its_engine(tmp_path, carphone_path):
    import json
    import subprocess
    import sys

    stats = tmp_path / "stats.json"
    args = [sys.executable, "-m", "rvm_live", "--source", str(carphone_path), "--realtime", "--engine",
            "openvino-bf16" if supports_bf16() else "openvino", "--max-frames", "30", "-o", "null", "--quiet",
            "--stats-json", str(stats)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(stats.read_text())
    assert report["engine"].startswith("openvino") and report["fullres"] == "fast"
    # a live source drops what a busy machine cannot take (no count of frames out is promised), none is lost
    assert report["frames_out"] > 0 and report["frames_out"] + report["frames_dropped"] == report["frames_in"] == 30
