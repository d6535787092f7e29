"""Several streams in one daemon: one engine, a state per stream, batches across streams, isolation, control."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import RecordingSink
from media import Peer, free_port, send, wait_until

from rvm_live.config import Config, load_toml, stream_configs
from rvm_live.engine import Engine
from rvm_live.errors import ConfigError
from rvm_live.runtime.daemon import Daemon
from rvm_live.runtime.stats import no_signal_card
from rvm_live.serve.control import ControlServer


@pytest.fixture(scope="module")
def engine_factory(mobilenet):
    """A fresh engine around the real (official-weights) network, as the daemon builds it."""
    def make(engine="torch"):
        if engine == "onnxruntime":
            return Engine("mobilenetv3", device="cpu", runtime="onnxruntime")
        return Engine("mobilenetv3", model=mobilenet, device="cpu")
    return make


class RgbOnlySink(RecordingSink):
    """A recording output that takes no alpha, as a virtual camera or an H.264 stream."""

    accepts_alpha = False


def test_rgb_or_rgba_is_decided_once_per_stream_from_its_sinks(carphone_path, engine_factory):
    """One engine, transparent backgrounds: the stream whose only output takes no alpha gets RGB (the
    foreground), the one with an RGBA output gets RGBA, and in a stream with both each output gets its own."""
    config = Config(streams=tuple({"id": i, "source": str(carphone_path), "bg": "transparent", "max_frames": 4}
                                  for i in ("rgb", "rgba", "both")))
    sinks = {"rgb": [RgbOnlySink("vcam-like")], "rgba": [RecordingSink("mov-like")],
             "both": [RgbOnlySink("vcam-like"), RecordingSink("mov-like")]}
    daemon = Daemon(config, engine=engine_factory(), sinks=sinks)
    assert [s.plan().rgba for s in daemon.sessions] == [False, True, True]
    daemon.run()
    shapes = {k: [{f.image.shape for _, f in sink.frames} for sink in v] for k, v in sinks.items()}
    assert shapes == {"rgb": [{(144, 176, 3)}], "rgba": [{(144, 176, 4)}],
                      "both": [{(144, 176, 3)}, {(144, 176, 4)}]}
    rgb, rgba = (sink.frames[-1][1].image for sink in sinks["both"])
    np.testing.assert_array_equal(rgb, rgba[..., :3])  # the RGB output gets the foreground, not a composite
    # the same foreground from another stream of the batch (batched float maths may differ by one level)
    assert np.abs(sinks["rgb"][0].frames[-1][1].image.astype(int) - rgb).max() <= 1


def two_streams(carphone_path, **extra) -> Config:
    return Config(streams=(
        {"id": "a", "source": str(carphone_path), "bg": "green", **extra},
        {"id": "b", "source": str(carphone_path), "bg": "#3040c0", "mirror": True, **extra},
    ))


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
@pytest.mark.slow
def test_two_streams_equal_each_run_alone(carphone_path, engine_factory, kind):
    """Batched through one engine, each stream comes out as it does alone: the states never mix."""
    config = two_streams(carphone_path, max_frames=24)
    records = {"a": RecordingSink("a"), "b": RecordingSink("b")}
    daemon = Daemon(config, engine=engine_factory(kind), sinks={k: [v] for k, v in records.items()})
    stats = daemon.run()
    assert stats["frames_out"] == 48 and stats["streams"]["a"]["frames_out"] == 24
    assert stats["mean_batch"] > 1  # the two streams really went through the network together
    for stream_id, cfg in stream_configs(config):
        alone = RecordingSink(f"alone-{stream_id}")
        solo = Daemon(cfg, engine=engine_factory(kind), sinks=[alone])
        solo.run()
        together = [f.image.astype(int) for _, f in records[stream_id].frames]
        single = [f.image.astype(int) for _, f in alone.frames]
        assert len(together) == len(single) == 24
        assert max(np.abs(x - y).max() for x, y in zip(together, single)) <= 1
    # and the two streams really differ (mirrored input, other background)
    a0, b0 = records["a"].frames[5][1].image, records["b"].frames[5][1].image
    assert np.abs(a0.astype(int) - b0.astype(int)).mean() > 10


@pytest.mark.slow
def test_one_streams_outage_does_not_hold_up_the_other(carphone_path, engine_factory):
    """A UDP camera that goes away: the outage is reported (health, stats, the "no signal" card on its output),
    nothing of the lost camera is matted any more, and the other stream goes on being matted and delivered."""
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    config = Config(streams=({"id": "cam", "source": url}, {"id": "clip", "source": str(carphone_path),
                                                           "realtime": True, "loop": True}))
    cam, clip = RecordingSink("cam", live=True), RecordingSink("clip", live=True)
    daemon = Daemon(config, engine=engine_factory(), sinks={"cam": [cam], "clip": [clip]})
    with Peer(send, url + "?pkt_size=1316", (220, 30, 30), (64, 48), 8.0) as sender:
        sender.result(60)  # sending (the child is slow to spawn on a busy machine): the camera opens up
        daemon.open_source()
        assert daemon.health("cam")["source_up"] is True  # so the outage below is a real loss
        daemon.start()
        try:
            wait_until(lambda: len(cam.frames) >= 30, 60, "frames from the UDP camera")
            wait_until(lambda: daemon.stats("cam")["source_outages"] >= 1, 30, "the camera's outage")
            assert daemon.health("cam")["source_up"] is False
            assert daemon.stats("cam")["source_up"] is False
            # a queue's worth of camera frames taken before the loss may still be in flight: let it drain
            frames_out = daemon.stats("clip")["frames_out"]
            wait_until(lambda: daemon.stats("clip")["frames_out"] >= frames_out + 10, 60, "the clip's frames")
            cam_matted, clip_matted = daemon.stats("cam")["frames_out"], daemon.stats("clip")["frames_out"]
            clip_delivered = len(clip.frames)
            # the other stream goes on: 30 more frames matted and delivered while the camera is still down
            wait_until(lambda: len(clip.frames) >= clip_delivered + 30, 120, "the clip's frames during the outage")
            assert daemon.stats("clip")["frames_out"] >= clip_matted + 30
            assert daemon.stats("cam")["frames_out"] == cam_matted  # no network call holds the lost camera
            assert daemon.health("cam")["source_up"] is False  # (the sender is gone for good: still down)
            # the camera's output is kept alive with the card that tells the viewer the source is gone
            wait_until(lambda: np.array_equal(cam.frames[-1][1].image, no_signal_card(48, 64)), 30,
                       "the camera's no-signal card")
        finally:
            daemon.stop()
            daemon.wait(10)
            daemon.close()


def test_control_api_routes_per_stream(carphone_path, engine_factory):
    config = two_streams(carphone_path, realtime=True, loop=True)
    records = {"a": RecordingSink("a", live=True), "b": RecordingSink("b", live=True)}
    daemon = Daemon(config, engine=engine_factory(), sinks={k: [v] for k, v in records.items()})
    daemon.start()
    try:
        with ControlServer(daemon) as server:
            base = "http://{}:{}".format(*server.address)
            wait_until(lambda: len(records["b"].frames) >= 3, 60, "frames of stream b")
            streams = get_json(base + "/streams")["streams"]
            assert [s["id"] for s in streams] == ["a", "b"]
            assert post(base + "/streams/b/background", {"bg": "#ff0000"})[0] == 200
            assert post(base + "/streams/a/pause", {})[0] == 200
            assert post(base + "/streams/nope/pause", {})[0] == 404
            assert post(base + "/background", {"bg": "blue"})[0] == 400  # which stream? say so
            wait_until(lambda: get_json(base + "/streams/b/stats")["background"] == "#ff0000", 10, "the swap")
            n = len(records["b"].frames)
            wait_until(lambda: len(records["b"].frames) >= n + 5, 60, "frames after the swap")
            red = records["b"].frames[-1][1].image
            corner = red[:10, :10].reshape(-1, 3).mean(0)  # background where the person is not
            assert corner[0] > 150 and corner[1] < 80
            assert get_json(base + "/streams/a/stats")["paused"] is True
            assert get_json(base + "/streams/b/stats")["paused"] is False
            metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
            assert 'rvm_live_frames_out_total{stream="a"}' in metrics
            assert 'rvm_live_frames_out_total{stream="b"}' in metrics
    finally:
        daemon.stop()
        daemon.wait(10)
        daemon.close()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_streams_table_is_validated():
    with pytest.raises(ConfigError, match=r"streams\[1\]: key 'engine' cannot differ per stream"):
        stream_configs(Config(streams=({"source": "demo"}, {"source": "demo", "engine": "torch"})))
    with pytest.raises(ConfigError, match=r"streams\[1\].id: 'x' is used twice"):
        stream_configs(Config(streams=({"id": "x"}, {"id": "x"})))
    with pytest.raises(ConfigError, match=r"streams\[0\]: downsample"):
        stream_configs(Config(streams=({"downsample": 7},)))


def test_two_cams_preset_describes_two_streams():
    config = load_toml("two-cams")
    specs = stream_configs(config)
    assert [s for s, _ in specs] == ["left", "right"]
    assert specs[1][1].mirror and specs[0][1].outputs != specs[1][1].outputs


def test_a_stage_failure_names_its_stream(carphone_path, engine_factory, monkeypatch):
    from rvm_live.errors import PipelineError, SinkError

    records = {"a": RecordingSink("a"), "b": RecordingSink("b")}

    def full_disk(frame):  # the real sink, failing as a file output does when the disk is full
        raise SinkError("b.mp4: No space left on device")

    monkeypatch.setattr(records["b"], "write", full_disk)
    daemon = Daemon(two_streams(carphone_path, max_frames=10), engine=engine_factory(),
                    sinks={k: [v] for k, v in records.items()})
    with pytest.raises(PipelineError, match="stream b: b.mp4: No space left on device") as err:
        daemon.run()
    assert err.value.stream_id == "b"


def test_outages_and_quality_travel_on_one_bus(carphone_path, engine_factory, monkeypatch):
    """A live output that fails once: SinkLost then SinkBack reach a bus subscriber, tagged with the stream."""
    from rvm_live.bus import Event, SinkBack, SinkLost
    from rvm_live.errors import SinkError

    sink = RecordingSink("flaky", live=True)
    real_write, failures = sink.write, [2]

    def flaky(frame):  # the real sink, refusing two frames as a dropped connection would
        if failures[0] > 0 and len(sink.frames) >= 3:
            failures[0] -= 1
            raise SinkError("flaky: connection reset by peer")
        real_write(frame)

    monkeypatch.setattr(sink, "write", flaky)
    config = Config(streams=({"id": "cam", "source": str(carphone_path), "realtime": True, "loop": True},))
    daemon = Daemon(config, engine=engine_factory(), sinks={"cam": [sink]})
    seen: list[Event] = []
    daemon.bus.subscribe(Event, seen.append)
    daemon.start()
    try:
        wait_until(lambda: any(isinstance(e, SinkBack) for e in seen), 60, "the output to come back")
    finally:
        daemon.stop()
        daemon.wait(10)
        daemon.close()
    lost = [e for e in seen if isinstance(e, SinkLost)]
    assert lost and lost[0].stream_id == "cam" and lost[0].sink == "flaky" and "reset by peer" in lost[0].cause
    assert [e.stream_id for e in seen if isinstance(e, SinkBack)][0] == "cam"
