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
from rvm_live.engine.fullres import FastFullRes
from rvm_live.engine.lowres import OrtCoefficients, downsample, find_cut, internal_size
from rvm_live.engine.ort import cpu_session, run_recurrent
from rvm_live.errors import ConfigError
from rvm_live.runtime.daemon import Daemon
from rvm_live.runtime.inference import InferenceStage

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
    state = [None] * 4
    fgrs, phas = [], []
    for frame in clip:
        src = (frame.transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
        (fgr, pha), state = run_recurrent(session, {"src": src, "downsample_ratio": np.array([RATIO], np.float32)},
                                          state)
        fgrs.append(fgr[0].transpose(1, 2, 0))
        phas.append(pha[0, 0])
    return np.stack(fgrs), np.stack(phas)


def torch_coefficients(model):
    """Our network's coefficients output, with the same contract as ``OrtCoefficients``."""
    def run(small, state):
        with torch.inference_mode():
            a, b, *state = model.coefficients(torch.from_numpy(small), *state)
        return a.numpy(), b.numpy(), state
    return run


def run_fast(network, clip):
    """(fgr in 0..1, pha, A, b) per frame through ``network`` and FastFullRes.matte."""
    state, fullres, out = [None] * 4, FastFullRes(), []
    for frame in clip:
        a, b, state = network(downsample(frame[None], RATIO), state)
        fgr, pha = fullres.matte(frame, a[0], b[0])
        out.append((np.clip(fgr, 0, 255) / 255, pha, a, b))
    return out


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_fast_path_matches_the_official_export(engine, official_onnx_path, mobilenet, clip, official):
    network = (OrtCoefficients(official_onnx_path, threads=2) if engine == "onnxruntime"
               else torch_coefficients(mobilenet))
    fgr_ref, pha_ref = official
    for (fgr, pha, a, _), want_fgr, want_pha in zip(run_fast(network, clip), fgr_ref, pha_ref):
        assert a.shape == (1, 4, *internal_size(288, 352, RATIO))
        assert np.abs(pha - want_pha).max() <= 1e-3  # the file-job bar, met by the live path too
        assert np.abs(fgr - want_fgr).max() <= 1e-3


def test_composite_equals_the_exact_composite_to_one_level(official_onnx_path, clip, official):
    fgr_ref, pha_ref = official
    network, fullres = OrtCoefficients(official_onnx_path, threads=2), FastFullRes()
    green = ColorBackground((0, 128, 0), device="cpu", dtype=torch.float32)
    state = [None] * 4
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
    a, b, _ = network(downsample(clip[:2], RATIO), [None] * 4)  # a batch of two frames
    rgba = FastFullRes()(clip[:2], (a, b), None)
    assert rgba.image.shape == (2, 288, 352, 4)
    np.testing.assert_array_equal(rgba.image[..., 3], rgba.alpha)
    assert 0 < (rgba.alpha == 255).mean() < 1 and (rgba.alpha == 0).any()  # a person, and background
    foreground = FastFullRes()(clip[:2], (a, b), None, rgba=False)  # outputs that take no alpha
    np.testing.assert_array_equal(foreground.image, rgba.image[..., :3])
    hard = FastFullRes()(clip[:2], (a, b), (0, 0, 255), threshold=0.5)
    assert set(np.unique(hard.alpha)) == {0, 255}
    behind = np.where(hard.alpha[..., None] == 0, hard.image, 0)  # where alpha is 0 the picture is the colour
    assert (behind[hard.alpha == 0] == [0, 0, 255]).all()
    picture = np.full((288, 352, 3), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "bg.png"), picture)
    for bg in (picture, parse_background(str(tmp_path / "bg.png")), parse_background("#4d4d4d")):
        out = FastFullRes()(clip[:1], (a[:1], b[:1]), bg, threshold=0.5)
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
        fullres(clip[:1], (a, a), None, threshold=1.5)
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
        daemon = Daemon(config, sinks=[record])
        assert daemon.engine.fullres == mode
        stats = daemon.run()
        assert stats["frames_out"] == 10 and stats["downsample_ratio"] == 0.5
        results[mode] = [f for _, f in record.frames]
    for exact, fast in zip(results["exact"], results["fast"]):
        assert fast.image.shape == exact.image.shape == (144, 176, 3)
        assert np.abs(fast.alpha.astype(int) - exact.alpha.astype(int)).max() <= 1
        assert np.abs(fast.image.astype(int) - exact.image.astype(int)).max() <= 2


def _fast_daemon(source, *, frames=40, sinks=None):
    config = Config(source=str(source), max_frames=frames, fullres="fast", engine="onnxruntime", device="cpu",
                    downsample=0.5, bg="#203040")
    return Daemon(config, sinks=sinks or [RecordingSink()])


def test_the_render_thread_gives_every_frame_of_a_file_job_in_order_as_an_inline_render(carphone_path):
    """The render on its own thread (overlapping the next frame's network) changes nothing but speed: every
    frame, in order, identical to matting and rendering each frame in one thread."""
    record = RecordingSink()
    daemon = _fast_daemon(carphone_path, sinks=[record])
    assert daemon.run()["frames_out"] == 40
    assert [f.index for _, f in record.frames] == list(range(40))
    inline = _fast_daemon(carphone_path)
    inline.open_source()
    session = inline.session()
    stage = InferenceStage(inline.sessions, inline.engine, stop=inline.stop_event, bus=inline.bus,
                           doorbell=inline.doorbell)
    try:
        for index, (_, threaded) in enumerate(record.frames):
            from rvm_live.frame import Frame

            alone = stage.matte_one(session, Frame(index, 0, "0", session.source.read()))
            np.testing.assert_array_equal(threaded.image, alone.image)
    finally:
        inline.close()


def test_a_failure_in_the_render_thread_stops_the_run_with_its_cause(carphone_path, monkeypatch):
    from rvm_live.errors import PipelineError

    record = RecordingSink()
    daemon = _fast_daemon(carphone_path, frames=None, sinks=[record])
    engine, done = daemon.engine, []
    real = engine.render

    def failing(matte, plans):  # the real render, failing at the 10th frame
        if len(done) == 9:
            raise MemoryError("cannot allocate the composite")
        done.append(1)
        return real(matte, plans)

    monkeypatch.setattr(engine, "render", failing)
    with pytest.raises(PipelineError, match="MemoryError: cannot allocate the composite") as err:
        daemon.run()
    assert isinstance(err.value.__cause__, MemoryError)
    assert not any(t.is_alive() for t in daemon._threads) and not daemon.renderer.alive
    assert len(record.frames) <= 9 and record.closed >= 1


def test_one_onnxruntime_session_serves_every_stream(carphone_path, monkeypatch):
    import onnxruntime

    made = []
    real = onnxruntime.InferenceSession

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counted)
    streams = tuple({"id": f"s{i}", "source": str(carphone_path), "outputs": ["null"]} for i in range(3))
    stats = Daemon(Config(streams=streams, max_frames=6, fullres="fast", engine="onnxruntime", device="cpu",
                          downsample=0.5)).run()
    assert len(made) == 1
    assert [s["frames_out"] for s in stats["streams"].values()] == [6, 6, 6]
    assert stats["mean_batch"] > 1  # streams of one size and ratio shared network calls
    assert stats["engine"] == "onnxruntime" and stats["fullres"] == "fast"


def test_fullres_auto_is_fast_for_live_sources_on_the_cpu_and_exact_for_file_jobs(carphone_path):
    from rvm_live.engine.select import fullres_mode

    live = Daemon(Config(source=str(carphone_path), realtime=True, device="cpu", engine="onnxruntime"),
                  sinks=[RecordingSink(live=True)])
    job = Daemon(Config(source=str(carphone_path), device="cpu", engine="onnxruntime"), sinks=[RecordingSink()])
    try:
        assert Config().fullres == "auto"
        assert live.engine.fullres == "fast" and job.engine.fullres == "exact"
        # what users see, with the runtime that runs the network
        assert live.stats()["fullres"] == "fast" and job.stats()["fullres"] == "exact"
        assert live.stats()["engine"] == job.stats()["engine"] == "onnxruntime"
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
            Daemon(Config(fullres="fast", device="cuda"), sinks=[RecordingSink()])
