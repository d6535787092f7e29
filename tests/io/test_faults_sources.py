"""Live network sources that are not up yet are waited for; a typo in a host name is still an error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import DaemonProcess, RecordingSink
from media import Peer, free_port, ramp_level, send, send_ramp, wait_until

from rvm_live.config import Config
from rvm_live.engine import Engine
from rvm_live.errors import SourceError, SourceNotReady
from rvm_live.io.sources.stream import StreamSource
from rvm_live.runtime.daemon import Daemon
from rvm_live.runtime.stats import no_signal_card


@pytest.mark.slow
def test_a_udp_source_that_starts_late_is_waited_for(official_onnx_path):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with DaemonProcess("--source", url, "-o", "null") as daemon:
        assert "waiting for it" in daemon.stderr
        health = daemon.get("/health")
        assert health["source"] == "waiting" and health["source_up"] is False
        assert daemon.get("/stats")["frames_out"] == 0
        with Peer(send, url + "?pkt_size=1316", (220, 30, 30), (176, 144), 60.0) as sender:
            wait_until(lambda: daemon.get("/stats")["frames_out"] > 0, 60, "the first frame")
            seen = time.time()
            print(f"first frame out {seen - sender.result(10)['first_frame_at']:.2f} s after the first packet")
            assert daemon.get("/health")["source"] == "up"
        code = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.stderr
    assert daemon.stderr.count("waiting for it") == 1 and "source back after" in daemon.stderr


@pytest.mark.slow
def test_outputs_show_the_card_until_a_late_source_comes_up(mobilenet):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    sink = RecordingSink("vcam-like", live=True)
    pipeline = Daemon(Config(source=url, no_signal_timeout=0.2), sinks=[sink],
                        engine=Engine("mobilenetv3", model=mobilenet, device="cpu"))
    pipeline.start()
    try:
        wait_until(lambda: len(sink.frames) >= 2, 30, "the no-signal card")
        assert all(np.array_equal(f.image, no_signal_card(360, 640)) for _, f in sink.frames)
        with Peer(send, url + "?pkt_size=1316", (220, 30, 30), (176, 144), 60.0):
            wait_until(lambda: pipeline.stats()["frames_out"] >= 5, 60, "frames from the late sender")
    finally:
        pipeline.stop()
        pipeline.close()
    assert pipeline.stats()["source_outages"] == 1


@pytest.mark.slow
def test_an_unknown_host_is_reported_at_once():
    proc = subprocess.run([sys.executable, "-m", "rvm_live", "--source", "rtsp://no-such-host.invalid/cam",
                           "-o", "null"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RVM_LIVE_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "unknown host 'no-such-host.invalid'" in proc.stderr and "Traceback" not in proc.stderr


def _port_is_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.mark.slow
def test_a_udp_source_keeps_its_socket_and_resumes_from_the_first_packet():
    """Through an outage the port stays bound, and a sender that comes back is decoded from its very first
    frame (its keyframe), not from the next keyframe a GOP later."""
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    source = StreamSource(url, open_timeout=0.3, read_timeout=1.0)
    try:
        with Peer(send, url + "?pkt_size=1316", (40, 200, 10), (176, 144), 60.0):
            wait_until(lambda: _opened(source), 60, "the first sender")
            assert source.read() is not None
        with pytest.raises(SourceError, match="no data for 1 s"):
            for _ in range(1000):
                source.read()
        source.suspend()  # what the capture stage does between reconnection attempts
        assert _port_is_taken(port)
        with pytest.raises(SourceNotReady, match="no packets yet"):
            source.open()
        assert _port_is_taken(port)
        with Peer(send_ramp, url + "?pkt_size=1316", (176, 144), 60.0) as sender:
            sender.result(60)  # its first packet is on its way: no open() is waiting for it yet
            time.sleep(0.3)
            wait_until(lambda: _opened(source), 60, "the second sender")
            first = source.read()
        assert abs(first.mean() - ramp_level(0)) < 3, f"first frame level {first.mean():.1f}, not the sender's first"
    finally:
        source.close()
    assert not _port_is_taken(port)


def _opened(source: StreamSource) -> bool:
    try:
        source.open()
    except SourceNotReady:
        return False
    return True


def test_udp_url_options_are_checked_and_a_port_in_use_is_an_error():
    port = free_port(socket.SOCK_DGRAM)
    with pytest.raises(SourceError, match="fifo_size='many' is not a whole number"):
        StreamSource(f"udp://127.0.0.1:{port}?fifo_size=many")
    with pytest.raises(SourceError, match="no port to listen on"):
        StreamSource("udp://127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        source = StreamSource(f"udp://127.0.0.1:{port}")
        with pytest.raises(SourceError, match=f"cannot listen on port {port}") as caught:
            source.open()
        assert not isinstance(caught.value, SourceNotReady)  # not worth waiting for: say so at once
