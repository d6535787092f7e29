"""Live network sources that are not up yet are waited for; a typo in a host name is still an error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
from daemon import Daemon
from media import Peer, free_port, send, wait_until
from test_pipeline import RecordingSink

from rvm_live.config import Config
from rvm_live.matting import Matter
from rvm_live.pipeline import Pipeline
from rvm_live.stats import no_signal_card


def test_a_udp_source_that_starts_late_is_waited_for(official_onnx_path):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with Daemon("--source", url, "-o", "null") as daemon:
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


def test_outputs_show_the_card_until_a_late_source_comes_up(mobilenet):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    sink = RecordingSink("vcam-like", live=True)
    pipeline = Pipeline(Config(source=url, no_signal_timeout=0.2), sinks=[sink],
                        matter=Matter("mobilenetv3", model=mobilenet, device="cpu"))
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


def test_an_unknown_host_is_reported_at_once():
    proc = subprocess.run([sys.executable, "-m", "rvm_live", "--source", "rtsp://no-such-host.invalid/cam",
                           "-o", "null"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RVM_LIVE_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "unknown host 'no-such-host.invalid'" in proc.stderr and "Traceback" not in proc.stderr
