"""The daemon's pipeline end to end: real clip, real model, real outputs and protocol peers on loopback."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import RecordingSink, solid_frames, write_frames
from media import Peer, decode_file, free_port, receive

from rvm_live.compositing.backgrounds import composite, parse_background
from rvm_live.config import Config
from rvm_live.engine import Engine
from rvm_live.engine.matter import Matter
from rvm_live.errors import PipelineError, VirtualCameraError
from rvm_live.io.sinks.vcam import VcamSink
from rvm_live.runtime.daemon import Daemon
from rvm_live.runtime.inference import InferenceStage
from rvm_live.runtime.session import default_outputs
from rvm_live.runtime.stats import no_signal_card


@pytest.fixture(scope="module")
def engine_factory(mobilenet):
    def make(**kw):
        return Engine("mobilenetv3", model=mobilenet, device="cpu", **kw)
    return make


def process(daemon: Daemon, frame):
    """Matte and render one frame of the daemon's only stream now, in this thread (its source must be open)."""
    return InferenceStage(daemon.sessions, daemon.engine, stop=daemon.stop_event, bus=daemon.bus,
                          doorbell=daemon.doorbell).matte_one(daemon.session(), frame)


@pytest.mark.slow
def test_file_to_file_every_frame_composited_with_its_own_alpha(tmp_path, carphone_path, carphone_frames,
                                                                engine_factory, mobilenet):
    record = RecordingSink()
    from rvm_live.io.sinks.stream import StreamSink

    out = tmp_path / "out.mp4"
    config = Config(source=str(carphone_path), outputs=(str(out),), max_frames=40)
    pipeline = Daemon(config, engine=engine_factory(), sinks=[record, StreamSink(str(out), config)])
    stats = pipeline.run()
    assert stats["frames_in"] == stats["frames_out"] == 40 and stats["frames_dropped"] == 0
    assert [f.index for _, f in record.frames] == list(range(40))
    # an independent run of the model over the same frames gives each output frame's own alpha
    reference, green = Matter("mobilenetv3", model=mobilenet, device="cpu"), parse_background("green")
    for (_, frame), source in zip(record.frames, carphone_frames):
        src = reference.upload(source)
        fgr, pha = reference.infer(src)
        expected = composite(fgr, pha, green, src)
        np.testing.assert_array_equal(frame.alpha, expected.alpha.numpy())
        np.testing.assert_array_equal(frame.image, expected.image.numpy())
    decoded = decode_file(out)
    assert len(decoded) == 40
    error = np.abs(decoded[20].astype(int) - record.frames[20][1].image.astype(int)).mean()
    assert error < 4  # H.264 at crf 20 is close to what we composited
    assert record.closed >= 1


def test_transparent_background_keeps_alpha_in_mov(tmp_path, carphone_path, engine_factory):
    from rvm_live.io.sinks.stream import StreamSink

    out = tmp_path / "alpha.mov"
    config = Config(source=str(carphone_path), bg="transparent", max_frames=5)
    pipeline = Daemon(config, engine=engine_factory(), sinks=[StreamSink(str(out), config)])
    pipeline.run()
    frames = decode_file(out, "rgba")
    assert len(frames) == 5
    alpha = frames[-1][..., 3]
    assert alpha.min() < 20 and alpha.max() > 235  # both background and person


def test_side_by_side_and_mirror(carphone_path, carphone_frames, engine_factory):
    record = RecordingSink()
    config = Config(source=str(carphone_path), max_frames=2, side_by_side=True, mirror=True)
    Daemon(config, engine=engine_factory(), sinks=[record]).run()
    image = record.frames[0][1].image
    assert image.shape == (144, 352, 3)
    np.testing.assert_array_equal(image[:, :176], carphone_frames[0][:, ::-1])


SLOW_S = 0.15


def slowed(engine: Engine, monkeypatch) -> Engine:
    """The real engine plus a fixed delay per call, standing in for a machine slower than the source."""
    real = engine.infer

    def infer(images, states):
        time.sleep(SLOW_S)
        return real(images, states)

    monkeypatch.setattr(engine, "infer", infer)
    return engine


class NewestSink(RecordingSink):
    """Records, with each frame written, the index of the newest frame the source had given by then."""

    def __init__(self) -> None:
        super().__init__()
        self.daemon: Daemon | None = None
        self.newest: list[int] = []

    def write(self, frame) -> None:
        super().write(frame)
        self.newest.append(self.daemon.stats()["frames_in"] - 1)


@pytest.mark.slow
def test_realtime_source_drops_frames_and_latency_stays_bounded(carphone_path, mobilenet, monkeypatch):
    record = NewestSink()
    config = Config(source=str(carphone_path), realtime=True, queue_size=1, max_frames=60, quality="fixed")
    engine = slowed(Engine("mobilenetv3", model=mobilenet, device="cpu"), monkeypatch)
    record.daemon = daemon = Daemon(config, engine=engine, sinks=[record])
    stats = daemon.run()
    assert stats["frames_in"] == 60
    assert stats["frames_dropped"] > 0 and stats["frames_out"] < 60
    assert stats["frames_out"] + stats["frames_dropped"] >= 59
    # no backlog, told in frames rather than ms: the frame matted next is one the source gave about when the
    # one before was written (the network was already on it), never an older frame left waiting in a queue; a
    # blocking or deep queue would hand over every frame in order and fall dozens behind the source
    indices = [frame.index for _, frame in record.frames]
    assert len(indices) >= 3
    lag = [newest - nxt for newest, nxt in zip(record.newest, indices[1:])]
    assert max(lag) <= 3, (lag, indices, record.newest)


def test_vcam_receives_composited_frames(carphone_path, engine_factory, fake_backends):
    config = Config(source=str(carphone_path), max_frames=10)
    Daemon(config, engine=engine_factory(), sinks=[VcamSink(backend="rvm-test-recorder")]).run()
    cam = fake_backends[0]
    assert (cam.width, cam.height) == (176, 144) and cam.fps == pytest.approx(29.97, abs=0.01)
    assert len(cam.frames) == 10 and cam.frames[0].shape == (144, 176, 3)
    assert cam.closed == 1
    # a file source into a live output is paced at the source's rate, not pushed as fast as possible
    gaps = np.diff(cam.sent_at)
    assert np.median(gaps) >= 0.8 / 29.97
    corner = cam.frames[-1][:10, :10].reshape(-1, 3).mean(0)  # background: green (0, 255, 0)
    assert corner[1] > 100 and corner[0] < 40 and corner[2] < 40


def test_missing_virtual_camera_fails_with_the_fix(carphone_path, engine_factory, fake_backends):
    pipeline = Daemon(Config(source=str(carphone_path), max_frames=5), engine=engine_factory(),
                        sinks=[VcamSink(backend="rvm-test-broken")])
    with pytest.raises(PipelineError) as err:
        pipeline.run()
    assert isinstance(err.value.__cause__, VirtualCameraError)
    assert "modprobe v4l2loopback devices=1 exclusive_caps=1" in str(err.value)
    assert "OBS" in str(err.value)


@pytest.mark.slow
def test_file_to_rtsp_listener(carphone_path, engine_factory):
    url = f"rtsp://127.0.0.1:{free_port()}/live"
    config = Config(source=str(carphone_path), max_frames=90)
    from rvm_live.io.sinks.stream import StreamSink

    listen = {"rtsp_flags": "listen", "listen_timeout": "20", "timeout": "10000000"}
    with Peer(receive, url, listen, None, 30) as peer:
        pipeline = Daemon(config, engine=engine_factory(), sinks=[StreamSink(url, config)])
        pipeline.run()
        report = peer.result(timeout=30)
    assert report["ok"], report
    assert report["count"] >= 30 and report["shape"] == [144, 176, 3]
    r, g, b = report["mean_rgb"]
    assert g > r + 15 and g > b + 15  # composited onto green


def test_blocked_sink_does_not_stall_the_others(carphone_path, engine_factory):
    gate = threading.Event()
    stuck, healthy = RecordingSink("stuck", live=True, block=gate), RecordingSink("healthy")
    # looped, so the source outlasts a slow (shared, loaded) CPU: the check is about stalling, not speed
    config = Config(source=str(carphone_path), realtime=True, loop=True)
    pipeline = Daemon(config, engine=engine_factory(), sinks=[stuck, healthy]).start()
    try:
        deadline = time.monotonic() + 60
        while len(healthy.frames) < 10 and time.monotonic() < deadline and pipeline.health()["ok"]:
            time.sleep(0.05)
        assert len(healthy.frames) >= 10
        assert len(stuck.frames) == 0
    finally:
        gate.set()
        pipeline.stop()
        pipeline.wait(10)
        pipeline.close()


def test_worker_failure_reaches_the_caller_with_its_cause(carphone_path, engine_factory, caplog, monkeypatch):
    record = RecordingSink()
    engine = engine_factory()

    def broken_infer(images, states):  # the real engine call, failing as a driver would
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine, "infer", broken_infer)
    pipeline = Daemon(Config(source=str(carphone_path)), sinks=[record], engine=engine)
    caplog.set_level("DEBUG", logger="rvm_live")  # the traceback is kept at debug level
    with pytest.raises(PipelineError, match="rvm-inference: RuntimeError: CUDA error") as err:
        pipeline.run()
    assert isinstance(err.value.__cause__, RuntimeError)
    assert "illegal memory access" in caplog.text
    assert not any(t.is_alive() for t in pipeline._threads)
    assert record.closed >= 1


def test_pause_passes_frames_through_and_background_swaps_live(carphone_path, carphone_frames, engine_factory):
    record = RecordingSink()
    config = Config(source=str(carphone_path), max_frames=6)
    pipeline = Daemon(config, engine=engine_factory(), sinks=[record])
    pipeline.pause()
    pipeline.open_source()
    frame0 = process(pipeline, next_frame(pipeline))
    np.testing.assert_array_equal(frame0.image, carphone_frames[0])
    pipeline.resume()
    pipeline.set_background("#ff0000")
    red = process(pipeline, next_frame(pipeline))
    corner = red.image[:8, :8].reshape(-1, 3).mean(0)
    assert corner[0] > 200 and corner[1] < 30
    with pytest.raises(ValueError):
        pipeline.set_background("not-a-colour")
    pipeline.close()


def next_frame(pipeline):
    from rvm_live.frame import Frame

    return Frame(0, time.monotonic_ns(), "t#0", pipeline.session().source.read())


def test_no_signal_card_is_readable_and_sized():
    card = no_signal_card(144, 176)
    assert card.shape == (144, 176, 3) and card.dtype == np.uint8
    assert card.max() > 150 and np.median(card) == 32  # light text on a dark card
    assert no_signal_card(10, 20, channels=4).shape == (10, 20, 4)


def test_default_outputs():
    assert default_outputs(Config(source="camera:0")) == ("vcam",)
    assert default_outputs(Config(source="demo")) == ("demo-matted.mp4",)
    assert default_outputs(Config(source="/x/clip.mov")) == ("clip-matted.mp4",)
    assert default_outputs(Config(outputs=("null",))) == ("null",)


@pytest.fixture(scope="module")
def background_files(tmp_path_factory):
    """A striped image and a two-colour video, made here, as backgrounds."""
    import cv2

    folder = tmp_path_factory.mktemp("bg")
    image = np.zeros((60, 80, 3), np.uint8)
    image[:] = (0, 0, 255)  # BGR: red
    cv2.imwrite(str(folder / "red.png"), image)
    write_frames(folder / "blue.mp4", solid_frames([(0, 0, 255)] * 3, (48, 64)), rate=30)  # RGB: blue
    return folder


@pytest.mark.parametrize(("bg", "check"), [
    ("lime", lambda px: px[1] > 240 and px[0] < 15 and px[2] < 15),
    ("#ff00ff", lambda px: px[0] > 240 and px[1] < 15 and px[2] > 240),
    ("red.png", lambda px: px[0] > 240 and px[1] < 15),
    ("blue.mp4", lambda px: px[2] > 200 and px[0] < 40),
    ("blur:8", lambda px: True),  # checked against the source below
    ("transparent", lambda px: px[3] < 20),
])
def test_every_background_kind_through_the_pipeline(carphone_path, carphone_frames, engine_factory,
                                                    background_files, bg, check):
    spec = str(background_files / bg) if bg.endswith((".png", ".mp4")) else bg
    record = RecordingSink()
    Daemon(Config(source=str(carphone_path), bg=spec, max_frames=3), engine=engine_factory(),
             sinks=[record]).run()
    frame = record.frames[-1][1]
    background = frame.alpha < 5  # where the model saw no person
    assert background.mean() > 0.1
    pixel = frame.image[background].mean(0)
    assert check(pixel), (bg, pixel)
    if bg.startswith("blur"):
        # the blurred background is the source itself, smoothed: close in colour, less detail
        source = carphone_frames[2].astype(float)
        assert np.abs(frame.image[background].astype(float) - source[background]).mean() < 40
        assert frame.image[background].std() <= source[background].std()
    assert frame.image.shape[2] == (4 if bg == "transparent" else 3)


@pytest.mark.slow
def test_file_to_live_output_loses_no_frame_and_realtime_file_ends(carphone_path, engine_factory):
    live = RecordingSink("live", live=True)
    stats = Daemon(Config(source=str(carphone_path), max_frames=20), engine=engine_factory(), sinks=[live]).run()
    assert [f.index for _, f in live.frames] == list(range(20)) and stats["frames_dropped"] == 0
    # --realtime plays the file as live, but its end is the end, not an outage to retry forever
    record = RecordingSink()
    stats = Daemon(Config(source=str(carphone_path), realtime=True), engine=engine_factory(),
                     sinks=[record]).run()
    assert stats["frames_in"] == 120 and stats["source_outages"] == 0


def test_pause_keeps_the_output_layout(carphone_path, engine_factory):
    for config in (Config(source=str(carphone_path), side_by_side=True), Config(source=str(carphone_path),
                                                                                 bg="transparent")):
        pipeline = Daemon(config, engine=engine_factory(), sinks=[RecordingSink()])
        pipeline.open_source()
        matted = process(pipeline, next_frame(pipeline))
        pipeline.pause()
        paused = process(pipeline, next_frame(pipeline))
        assert paused.image.shape == matted.image.shape
        pipeline.close()


@pytest.mark.slow
def test_file_job_is_not_held_up_by_a_stuck_live_output(carphone_path, engine_factory, monkeypatch):
    import rvm_live.runtime.inference as inference_stage

    monkeypatch.setattr(inference_stage, "LIVE_OUTPUT_WAIT_S", 0.2)
    gate = threading.Event()
    stuck, recording = RecordingSink("stuck", live=True, block=gate), RecordingSink("file")
    pipeline = Daemon(Config(source=str(carphone_path), max_frames=12), engine=engine_factory(),
                        sinks=[stuck, recording])
    try:
        pipeline.start()
        deadline = time.monotonic() + 120
        while len(recording.frames) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [f.index for _, f in recording.frames] == list(range(12))  # the file output lost nothing
        assert pipeline.stats()["sinks"]["stuck"]["dropped"] > 0  # the stuck output's losses are counted
    finally:
        gate.set()
        pipeline.stop()
        pipeline.wait(10)
        pipeline.close()


def fail_later(engine: Engine, monkeypatch, at: int = 4) -> None:
    """The real engine, until the ``at``-th call: then the device fails."""
    calls, real = [0], engine.infer

    def infer(images, states):
        calls[0] += 1
        if calls[0] == at:
            raise RuntimeError("device lost")
        return real(images, states)

    monkeypatch.setattr(engine, "infer", infer)


def test_failed_run_never_replaces_an_earlier_file(tmp_path, carphone_path, mobilenet, monkeypatch):
    from rvm_live.io.sinks.stream import StreamSink

    out = tmp_path / "result.mp4"
    out.write_bytes(b"yesterday's good result")
    config = Config(source=str(carphone_path))
    engine = Engine("mobilenetv3", model=mobilenet, device="cpu")
    fail_later(engine, monkeypatch)
    pipeline = Daemon(config, engine=engine, sinks=[StreamSink(str(out), config)])
    with pytest.raises(PipelineError, match="device lost"):
        pipeline.run()
    assert out.read_bytes() == b"yesterday's good result"
    partial = decode_file(tmp_path / "result.mp4.part")  # what was made before the failure, playable
    assert len(partial) == 3


def test_time_chunked_file_job_matches_frame_by_frame(carphone_path, mobilenet, monkeypatch):
    results = {}
    for chunk in (1, 4):
        record = RecordingSink()
        engine = Engine("mobilenetv3", model=mobilenet, device="cpu")
        chunks = []
        real_run_clip = engine.run_clip

        def counting(src, state, chunks=chunks, real=real_run_clip):  # the engine's own call, counted
            chunks.append(src.shape[1])
            return real(src, state)

        monkeypatch.setattr(engine, "run_clip", counting)
        config = Config(source=str(carphone_path), max_frames=14, chunk=chunk, queue_size=4, bg="blur:6")
        pipeline = Daemon(config, engine=engine, sinks=[record])
        stats = pipeline.run()
        assert pipeline.session().chunk == chunk and stats["frames_out"] == 14
        assert bool(chunks) == (chunk > 1) and max(chunks, default=1) <= chunk
        results[chunk] = record.frames
    assert [f.index for _, f in results[4]] == list(range(14))
    for (_, a), (_, b) in zip(results[1], results[4]):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2  # same matte, same background
        assert np.abs(a.alpha.astype(int) - b.alpha.astype(int)).max() <= 2


def test_live_sources_never_chunk(carphone_path, engine_factory):
    pipeline = Daemon(Config(source=str(carphone_path), realtime=True, chunk=4), engine=engine_factory(),
                        sinks=[RecordingSink()])
    pipeline.open_source()
    assert pipeline.session().chunk == 1
    pipeline.close()
