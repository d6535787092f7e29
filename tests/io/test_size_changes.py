"""A source that changes resolution mid-stream (a file, a UDP sender restarting) never ends an output."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import av
import pytest
from helpers import DaemonProcess, solid_frames, write_frames
from media import Peer, decode_file, free_port, send, wait_until


def segment(width: int, height: int, n: int, level: int) -> bytes:
    """``n`` grey frames at one size as MPEG-TS; segments concatenated make one stream that changes size."""
    buf = io.BytesIO()
    write_frames(buf, solid_frames([level] * n, (height, width)), rate=30, fmt="mpegts")
    return buf.getvalue()


@pytest.mark.slow
def test_a_file_that_changes_size_mid_stream_goes_through_every_output(tmp_path, official_onnx_path):
    source = tmp_path / "switch.ts"
    source.write_bytes(segment(160, 120, 6, 60) + segment(320, 180, 6, 180))
    with av.open(str(source)) as c:  # the fault is real: the decoder itself hands over the new size
        assert {(f.width, f.height) for f in c.decode(video=0)} == {(160, 120), (320, 180)}
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = subprocess.run([sys.executable, "-m", "rvm_live", "--source", str(source), "-o", "null", "-o", str(out),
                           "--stats-json", str(stats)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RVM_LIVE_OFFLINE": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(stats.read_text())["frames_out"] == 12
    frames = decode_file(out)
    assert len(frames) == 12 and {f.shape for f in frames} == {(120, 160, 3)}
    assert proc.stderr.count("frames are now 320x180; scaling them to 160x120") == 1  # said once, not per frame


@pytest.mark.slow
def test_a_udp_sender_that_restarts_at_another_size_keeps_the_daemon_running(official_onnx_path):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with DaemonProcess("--source", url, "-o", "null") as daemon:
        with Peer(send, url + "?pkt_size=1316", (200, 40, 40), (176, 144), 60.0):
            wait_until(lambda: daemon.get("/stats")["frames_out"] >= 5, 60, "frames at 176x144")
        before = daemon.get("/stats")["frames_out"]
        with Peer(send, url + "?pkt_size=1316", (40, 200, 40), (320, 240), 60.0):
            wait_until(lambda: daemon.proc.poll() is not None or daemon.get("/stats")["frames_out"] >= before + 10,
                       60, "frames at 320x240")
        assert daemon.proc.poll() is None, daemon.stderr
        code = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.stderr, daemon.stderr
    assert "null sink: frames are now 320x240" in daemon.stderr
