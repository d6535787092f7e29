"""No peer can stall anything but its own output: silent servers, stopped receivers, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import DaemonProcess
from media import SilentServer, free_port

from rvm_live.config import Config
from rvm_live.errors import SinkError
from rvm_live.frame import Frame
from rvm_live.io.sinks.base import create_sink
from rvm_live.io.sinks.isolated import IsolatedSink


def test_network_outputs_are_isolated_and_files_are_not(tmp_path):
    assert isinstance(create_sink("rtmp://127.0.0.1:1/live", Config()), IsolatedSink)
    assert not isinstance(create_sink(str(tmp_path / "a.mp4"), Config()), IsolatedSink)


@pytest.mark.parametrize("scheme", ["rtmp", "rtsp"])
@pytest.mark.slow
def test_a_silent_server_costs_one_deadline_and_a_fresh_writer(scheme):
    with SilentServer() as server:
        sink = IsolatedSink(f"{scheme}://127.0.0.1:{server.port}/live", Config())
        # our deadline, or FFmpeg's own 5 s RTSP timeout when the writer started quickly enough
        with pytest.raises(SinkError, match="no progress for 6 s while connecting|cannot start"):
            sink.open(64, 64, 30.0)
        assert sink._process is None  # the stuck writer was killed, not left behind
        with pytest.raises(SinkError):
            sink.open(64, 64, 30.0)
        assert len(server.accepted) == 2  # a second, fresh attempt


def test_a_cancelled_wait_returns_at_once():
    stop = threading.Event()
    with SilentServer() as server:
        sink = IsolatedSink(f"rtmp://127.0.0.1:{server.port}/live", Config())
        sink.cancel_on(stop)
        threading.Timer(0.5, stop.set).start()
        with pytest.raises(SinkError, match="abandoned"):
            sink.open(64, 64, 30.0)


@pytest.mark.slow
def test_udp_output_through_the_writer_process():
    from media import Peer, receive

    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    import numpy as np

    image = np.full((144, 176, 3), (200, 40, 40), np.uint8)
    with Peer(receive, url + "?timeout=20000000", {}, "mpegts", 10) as peer:
        time.sleep(1.0)  # the receiver binds first: UDP has no handshake
        sink = IsolatedSink(url + "?pkt_size=1316", Config())
        sink.open(176, 144, 30.0)
        for i in range(90):
            sink.write(Frame(i, time.monotonic_ns(), "t", image))
            time.sleep(1 / 30)
        sink.close()
        report = peer.result(timeout=60)
    assert report["ok"] and report["count"] == 10 and report["mean_rgb"][0] > 150, report


@pytest.mark.slow
def test_sigterm_exits_promptly_while_an_output_server_is_silent(tmp_path, carphone_path, official_onnx_path):
    stats_path = tmp_path / "stats.json"
    with SilentServer() as server, DaemonProcess("--source", str(carphone_path), "--realtime", "--loop", "-o",
                                          f"rtmp://127.0.0.1:{server.port}/live", "-o", "null",
                                          "--stats-json", str(stats_path)) as daemon:
        deadline = time.monotonic() + 60
        while (len(server.accepted) < 2 or daemon.get("/stats")["frames_out"] < 60) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(server.accepted) >= 2, "the output was never retried"
        assert daemon.get("/stats")["sinks"]["null"]["frames"] >= 60  # the other output kept going all along
        sent = time.monotonic()
        code = daemon.stop(signal.SIGTERM, timeout=20)
        print(f"SIGTERM to exit: {time.monotonic() - sent:.2f} s")
    assert code == 0, daemon.stderr
    assert "Traceback" not in daemon.stderr
    report = json.loads(stats_path.read_text())
    assert report["sinks"][f"rtmp://127.0.0.1:{server.port}/live"]["connected"] is False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.slow
def test_a_signal_while_starting_up_is_one_line(sig):
    proc = subprocess.Popen([sys.executable, "-m", "rvm_live", "--source", "demo", "-o", "null"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RVM_LIVE_OFFLINE": "1"})
    time.sleep(1.5)  # inside the heavy imports or the model load
    proc.send_signal(sig)
    if sig == signal.SIGHUP:  # ignored until there is a config to re-read; then stop it
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode in (0, 130, 128 + signal.SIGTERM), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


# Started by every interpreter whose path holds it: the first ``import cv2`` leaves a mark, then takes 30 s, so
# a signal can be sent at exactly that moment of start-up.
SLOW_CV2 = """
import importlib.abc, os, sys, time

class SlowCv2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cv2" and self in sys.meta_path:
            sys.meta_path.remove(self)
            open(os.environ["RVM_TEST_MARK"], "w").close()
            time.sleep(30)
        return None

sys.meta_path.insert(0, SlowCv2())
"""


@pytest.mark.parametrize("launcher", ["rvm-live", "python -m rvm_live"])
def test_ctrl_c_while_opencv_loads_is_one_line(tmp_path, launcher):
    (tmp_path / "sitecustomize.py").write_text(SLOW_CV2)
    mark = tmp_path / "importing-cv2"
    script = Path(sys.executable).parent / "rvm-live"  # the console script pip made beside this interpreter
    command = [str(script)] if launcher == "rvm-live" else [sys.executable, "-m", "rvm_live"]
    assert Path(command[0]).exists(), command
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([*command, "--source", "demo", "-o", "null"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": path, "RVM_TEST_MARK": str(mark),
                                 "RVM_LIVE_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 60
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), "cv2 was never imported"
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=20)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "rvm-live: interrupted"


@pytest.mark.slow
def test_a_receiver_that_stops_reading_is_abandoned_within_the_write_deadline():
    import numpy as np
    from media import Peer, open_with_retry, receive

    url = f"rtsp://127.0.0.1:{free_port()}/live"
    listen = {"rtsp_flags": "listen", "listen_timeout": "30", "timeout": "60000000"}
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)  # incompressible: fills TCP fast
    with Peer(receive, url, listen, None, 10**6) as peer:
        sink = IsolatedSink(url, Config(bitrate=50_000_000))
        time.sleep(2.0)
        open_with_retry(sink, 640, 480, 30.0, within=40)
        for i in range(10):
            sink.write(Frame(i, time.monotonic_ns(), "t", noise))
        os.kill(peer.process.pid, signal.SIGSTOP)  # the peer is alive, connected, and reads nothing more
        try:
            with pytest.raises(SinkError, match="no progress for 2 s while writing"):
                for i in range(10, 10_000):
                    sink.write(Frame(i, time.monotonic_ns(), "t", np.roll(noise, i, axis=1)))
            assert sink._process is None
        finally:
            os.kill(peer.process.pid, signal.SIGCONT)
            sink.close()
