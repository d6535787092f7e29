"""The fast full-resolution stage: the ONNX export cut to low-res coefficients, and FastFullRes applying them,
checked against the official export at the same ratio on the real clip."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch
from helpers import RecordingSink
from onnx import TensorProto, helper

from rvm_live.compositing.backgrounds import ColorBackground, composite, parse_background
from rvm_live.config import Config
from rvm_live.engine.fullres import FastFullRes, FastMatter
from rvm_live.engine.lowres import OrtCoefficients, TorchCoefficients, downsample, find_cut, internal_size
from rvm_live.engine.ort import cpu_session
from rvm_live.errors import ConfigError
from rvm_live.pipeline import Pipeline

RATIO = 0.5
FRAMES = 8


@pytest.fixture(scope="module")
def clip(carphone_frames) -> np.ndarray:
    """The first frames at 352x288, so that the refiner upsamples by 2 at ratio 0.5."""
    return np.stack([cv2.resize(f, (352, 288), interpolation=cv2.INTER_LINEAR) for f in carphone_frames[:FRAMES]])


@pytest.fixture(scope="module")
def official(official_onnx_path, clip):
    """fgr [N,H,W,3] and pha [N,H,W] from the official export (full graph), state carried."""
    session = cpu_session(official_onnx_path, 2)
    state = [np.zeros((1, 1, 1, 1), np.float32)] * 4
    fgrs, phas = [], []
    for frame in clip:
        src = (frame.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
        fgr, pha, *state = session.run(None, {"src": src, "downsample_ratio": np.array([RATIO], np.float32),
                                              **dict(zip(("r1i", "r2i", "r3i", "r4i"), state))})
        fgrs.append(fgr[0].transpose(1, 2, 0))
        phas.append(pha[0, 0])
    return np.stack(fgrs), np.stack(phas)


def run_fast(network, clip):
    """(fgr in 0..1, pha, A, b) per frame through ``network`` and FastFullRes.matte."""
    state, fullres, out = network.initial_state(), FastFullRes(), []
    for frame in clip:
        a, b, state = network(downsample(frame[None], RATIO), state)
        fgr, pha = fullres.matte(frame, a[0], b[0])
        out.append((np.clip(fgr, 0, 255) / 255, pha, a, b))
    return out


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_fast_path_matches_the_official_export(engine, official_onnx_path, mobilenet, clip, official):
    network = OrtCoefficients(official_onnx_path, threads=2) if engine == "onnxruntime" else TorchCoefficients(
        mobilenet)
    fgr_ref, pha_ref = official
    for (fgr, pha, a, _), want_fgr, want_pha in zip(run_fast(network, clip), fgr_ref, pha_ref):
        assert a.shape == (1, 4, *internal_size(288, 352, RATIO))
        assert np.abs(pha - want_pha).max() <= 1e-3  # the file-job bar, met by the live path too
        assert np.abs(fgr - want_fgr).max() <= 1e-3


def test_composite_equals_the_exact_composite_to_one_level(official_onnx_path, clip, official):
    fgr_ref, pha_ref = official
    network, fullres = OrtCoefficients(official_onnx_path, threads=2), FastFullRes()
    green = ColorBackground((0, 128, 0), device="cpu", dtype=torch.float32)
    state = network.initial_state()
    for frame, fgr, pha in zip(clip, fgr_ref, pha_ref):
        a, b, state = network(downsample(frame[None], RATIO), state)
        out = fullres(frame[None], (a, b), green)
        fgr_t = torch.from_numpy(fgr).permute(2, 0, 1)
        exact = composite(fgr_t, torch.from_numpy(pha), green, fgr_t)
        assert out.image.shape == (1, 288, 352, 3) and out.image.dtype == np.uint8
        diff = np.abs(out.image[0].astype(int) - exact.image.numpy().astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.1
        assert np.abs(out.alpha[0].astype(int) - exact.alpha.numpy().astype(int)).max() <= 1


def test_transparent_threshold_and_picture_backgrounds(official_onnx_path, clip, tmp_path):
    network = OrtCoefficients(official_onnx_path, threads=1)
    a, b, _ = network(downsample(clip[:2], RATIO), network.initial_state())  # a batch of two frames
    rgba = FastFullRes()(clip[:2], (a, b), None)
    assert rgba.image.shape == (2, 288, 352, 4)
    np.testing.assert_array_equal(rgba.image[..., 3], rgba.alpha)
    assert 0 < (rgba.alpha == 255).mean() < 1 and (rgba.alpha == 0).any()  # a person, and background
    hard = FastFullRes(threshold=0.5)(clip[:2], (a, b), (0, 0, 255))
    assert set(np.unique(hard.alpha)) == {0, 255}
    behind = np.where(hard.alpha[..., None] == 0, hard.image, 0)  # where alpha is 0 the picture is the colour
    assert (behind[hard.alpha == 0] == [0, 0, 255]).all()
    picture = np.full((288, 352, 3), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "bg.png"), picture)
    for bg in (picture, parse_background(str(tmp_path / "bg.png")), parse_background("#4d4d4d")):
        out = FastFullRes(threshold=0.5)(clip[:1], (a[:1], b[:1]), bg)
        assert (out.image[0][out.alpha[0] == 0] == 77).all()
    blurred = FastFullRes()(clip[:1], (a[:1], b[:1]), parse_background("blur:8"))
    assert blurred.image.shape == (1, 288, 352, 3)


def test_bad_inputs_name_the_culprit(official_onnx_path, clip):
    fullres, a = FastFullRes(), np.zeros((1, 4, 144, 176), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        fullres(clip[:1].astype(np.float32), (a, a), None)
    with pytest.raises(ValueError, match="coefficients"):
        fullres(clip[:1], (a, a[:, :3]), None)
    with pytest.raises(ValueError, match="background picture"):
        fullres(clip[:1], (a, a), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        FastFullRes(threshold=1.5)
    identity = helper.make_graph([helper.make_node("Identity", ["src"], ["pha"])], "g",
                                 [helper.make_tensor_value_info("src", TensorProto.FLOAT, [1])],
                                 [helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="guided-filter"):
        find_cut(helper.make_model(identity).graph)
    assert find_cut(onnx.load(str(official_onnx_path)).graph)[0] != "src"


def test_pipeline_fast_fullres_matches_the_exact_pipeline(carphone_path):
    results = {}
    for mode in ("exact", "fast"):
        record = RecordingSink()
        config = Config(source=str(carphone_path), max_frames=10, fullres=mode, engine="onnxruntime",
                        device="cpu", downsample=0.5, bg="#203040")
        pipeline = Pipeline(config, sinks=[record])
        assert isinstance(pipeline.state, FastMatter) == (mode == "fast")
        stats = pipeline.run()
        assert stats["frames_out"] == 10 and stats["downsample_ratio"] == 0.5
        results[mode] = [f for _, f in record.frames]
    for exact, fast in zip(results["exact"], results["fast"]):
        assert fast.image.shape == exact.image.shape == (144, 176, 3)
        assert np.abs(fast.alpha.astype(int) - exact.alpha.astype(int)).max() <= 1
        assert np.abs(fast.image.astype(int) - exact.image.astype(int)).max() <= 2


def _fast_run(source, monkeypatch, *, pipelined, frames=40):
    from rvm_live.runtime import inference

    monkeypatch.setattr(inference, "PIPELINED", pipelined)
    record = RecordingSink()
    pipeline = Pipeline(Config(source=str(source), max_frames=frames, fullres="fast", engine="onnxruntime",
                               device="cpu", downsample=0.5, bg="#203040"), sinks=[record])
    return pipeline, record


def test_the_pipelined_fast_path_gives_exactly_the_serial_frames_in_order(carphone_path, monkeypatch):
    """The full-res stage on its own thread (overlapping the next frame's network) changes nothing but speed:
    every frame, in order, identical to the one-thread path."""
    results = {}
    for pipelined in (False, True):
        pipeline, record = _fast_run(carphone_path, monkeypatch, pipelined=pipelined)
        assert pipeline.run()["frames_out"] == 40
        assert (pipeline.inference._finisher is not None) == pipelined  # the path under test ran
        results[pipelined] = [f for _, f in record.frames]
    assert [f.index for f in results[True]] == list(range(40))
    for serial, pipelined in zip(results[False], results[True], strict=True):
        np.testing.assert_array_equal(pipelined.image, serial.image)


def test_a_failure_in_the_pipelined_full_res_stage_stops_the_run_with_its_cause(carphone_path, monkeypatch):
    from rvm_live.errors import PipelineError

    pipeline, record = _fast_run(carphone_path, monkeypatch, pipelined=True, frames=None)
    engine, done = pipeline.engine, []
    real = engine.complete

    def failing(begun, state, background, threshold):  # the real stage, failing at the 10th frame
        if len(done) == 9:
            raise MemoryError("cannot allocate the composite")
        done.append(1)
        return real(begun, state, background, threshold)

    monkeypatch.setattr(engine, "complete", failing)
    with pytest.raises(PipelineError, match="MemoryError: cannot allocate the composite") as err:
        pipeline.run()
    assert isinstance(err.value.__cause__, MemoryError)
    assert not any(t.is_alive() for t in pipeline._threads)
    assert not pipeline.inference._finisher._thread.is_alive()
    assert len(record.frames) <= 9 and record.closed >= 1


def test_fullres_auto_is_fast_for_live_sources_on_the_cpu_and_exact_for_file_jobs(carphone_path):
    from rvm_live.engine.select import fullres_mode

    live = Pipeline(Config(source=str(carphone_path), realtime=True, device="cpu", engine="onnxruntime"),
                    sinks=[RecordingSink(live=True)])
    job = Pipeline(Config(source=str(carphone_path), device="cpu", engine="onnxruntime"), sinks=[RecordingSink()])
    try:
        assert Config().fullres == "auto"
        assert getattr(live.engine, "fused", False) and isinstance(live.state, FastMatter)
        assert not getattr(job.engine, "fused", False) and not isinstance(job.state, FastMatter)
        assert live.stats()["fullres"] == "fast" and job.stats()["fullres"] == "exact"  # what users see
    finally:
        live.close()
        job.close()
    assert fullres_mode(Config(fullres="exact", device="cpu"), live=True) == "exact"  # asked for: kept
    assert fullres_mode(Config(device="cpu"), live=False) == "exact"


def test_fast_fullres_is_a_cpu_option():
    with pytest.raises(ConfigError, match="fullres"):
        Config(fullres="quick")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CPU"):
            Pipeline(Config(fullres="fast", device="cuda"), sinks=[RecordingSink()])
