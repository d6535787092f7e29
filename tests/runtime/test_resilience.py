"""Keeps running: source and sink outages with real peers on loopback, live control over HTTP, memory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import RecordingSink
from media import Peer, free_port, receive, send, wait_until

from rvm_live.config import Config
from rvm_live.engine import Engine
from rvm_live.io.sinks.stream import StreamSink
from rvm_live.runtime.daemon import Daemon
from rvm_live.runtime.stats import no_signal_card
from rvm_live.serve.control import ControlServer


@pytest.fixture(scope="module")
def engine_factory(mobilenet):
    def make():
        return Engine("mobilenetv3", model=mobilenet, device="cpu")
    return make


def count_resets(state, monkeypatch) -> list[int]:
    """Wrap the stream state's real ``reset`` to count calls; returns the (one-element) counter."""
    calls, real = [0], state.reset

    def counting():
        calls[0] += 1
        real()

    monkeypatch.setattr(state, "reset", counting)
    return calls


def left_colour(frame) -> np.ndarray:
    """Mean colour of the left (input) half of a side-by-side frame."""
    return frame.image[:, : frame.width // 2].reshape(-1, frame.image.shape[2])[:, :3].mean(0)


@pytest.mark.slow
def test_source_outage_keeps_output_alive_and_recovers(engine_factory, caplog, monkeypatch):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    sink = RecordingSink("vcam-like", live=True)
    config = Config(source=url, side_by_side=True, no_signal_timeout=0.5)
    engine = engine_factory()
    with Peer(send, url + "?pkt_size=1316", (220, 30, 30), (176, 144), 4.0) as sender:
        # packets flow before the source opens: otherwise it starts "waiting", with the no-signal card out
        sender.result(60)
        pipeline = Daemon(config, engine=engine, sinks=[sink])
        resets = count_resets(pipeline.session().state, monkeypatch)
        pipeline.start()
        try:
            wait_until(lambda: len(sink.frames) >= 5, 60, "frames before the outage")
            # the sender stops after 4 s: the source times out, the output keeps going
            wait_until(lambda: pipeline.stats()["source_outages"] >= 1, 30, "the outage to be noticed")
            card = no_signal_card(144, 352)
            wait_until(lambda: any(np.array_equal(f.image, card) for _, f in sink.frames[-5:]), 30,
                       "the no-signal card")
            before, resets_before = len(sink.frames), resets[0]
            assert pipeline.health()["source_up"] is False
            with Peer(send, url + "?pkt_size=1316", (30, 30, 220), (176, 144), 30.0):
                wait_until(lambda: any(left_colour(f)[2] > 150 for _, f in sink.frames[before:]), 60,
                           "frames from the restarted sender")
            stats = pipeline.stats()
        finally:
            pipeline.stop()
            pipeline.wait(10)
            pipeline.close()
    assert resets[0] > resets_before  # the recurrent state starts afresh on the new stream
    # one line when the source goes, one when it is back: not one per retry or per frame
    lost = [r for r in caplog.records if "source lost" in r.getMessage()]
    back = [r for r in caplog.records if "source back" in r.getMessage()]
    assert len(lost) == stats["source_outages"] and len(back) >= 1
    assert stats["source_outages"] >= 1 and stats["source_outage_s"] > 0
    assert sink.opened and len(sink.opened) == 1  # the output kept its device the whole time
    reds = [left_colour(f) for _, f in sink.frames[:5]]
    assert all(c[0] > 150 for c in reds)


@pytest.mark.slow
def test_sink_outage_reconnects_while_other_sinks_continue(carphone_path, engine_factory):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    listen = {"rtsp_flags": "listen", "listen_timeout": "30", "timeout": "10000000"}
    other = RecordingSink("other")
    config = Config(source=str(carphone_path), realtime=True, loop=True)
    rtsp = StreamSink(url, config)
    pipeline = Daemon(config, engine=engine_factory(), sinks=[rtsp, other])
    try:
        with Peer(receive, url, listen, None, 15) as first:
            pipeline.start()
            assert first.result(timeout=60)["count"] == 15  # then it hangs up: the server went away
        frames_during = len(other.frames)
        with Peer(receive, url, listen, None, 15) as second:
            report = second.result(timeout=90)
        assert report["ok"] and report["count"] == 15, report
        stats = pipeline.stats()
        assert stats["sinks"][url]["reconnects"] >= 1
        assert len(other.frames) > frames_during  # the other output never stopped
    finally:
        pipeline.stop()
        pipeline.wait(10)
        pipeline.close()


def call(server, method, path, body=None, token=None):
    host, port = server.address
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")  # the control API takes JSON only
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_control_api_drives_a_running_pipeline(carphone_path, carphone_frames, engine_factory, tmp_path):
    sink = RecordingSink("out", live=True)
    config = Config(source=str(carphone_path), realtime=True, loop=True)
    pipeline = Daemon(config, engine=engine_factory(), sinks=[sink])
    pipeline.start()
    server = ControlServer(pipeline, "127.0.0.1", 0).start()
    try:
        wait_until(lambda: len(sink.frames) >= 3, 60, "first frames")
        status, body = call(server, "GET", "/health")
        assert status == 200 and json.loads(body)["ok"] is True
        status, body = call(server, "POST", "/background", {"bg": "#0000ff"})
        assert status == 200
        mark = len(sink.frames)
        wait_until(lambda: any(f.image[:6, :6, 2].mean() > 200 for _, f in sink.frames[mark:]), 30, "blue bg")
        status, body = call(server, "POST", "/background", {"bg": str(tmp_path / "missing.png")})
        assert 400 <= status < 500 and "missing.png" in json.loads(body)["error"]
        assert call(server, "POST", "/pause")[0] == 200
        mark = len(sink.frames)
        wait_until(lambda: any(any(np.array_equal(f.image, src) for src in carphone_frames)
                               for _, f in sink.frames[mark:]), 30, "unmatted frames while paused")
        assert call(server, "POST", "/resume")[0] == 200
        assert call(server, "POST", "/reset")[0] == 200
        status, body = call(server, "GET", "/stats")
        stats = json.loads(body)
        assert status == 200 and stats["frames_out"] > 0 and stats["backbone"] == "mobilenetv3"
        status, metrics = call(server, "GET", "/metrics")
        assert status == 200 and "rvm_live_frames_out_total" in metrics
        assert call(server, "POST", "/nope")[0] == 404
        assert pipeline.health()["ok"]  # bad requests never hurt the pipeline
    finally:
        server.close()
        pipeline.stop()
        pipeline.wait(10)
        pipeline.close()


def test_control_beyond_loopback_needs_a_token():
    env = {k: v for k, v in os.environ.items() if k != "RVM_LIVE_CONTROL_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "rvm_live", "--control", f"0.0.0.0:{free_port()}", "-o", "null",
                           "--max-frames", "1"], capture_output=True, text=True, timeout=120,
                          env={**env, "RVM_LIVE_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "0.0.0.0" in proc.stderr and "token" in proc.stderr and "Traceback" not in proc.stderr
