"""A network source whose server accepts and never answers is waited for, and a stop while waiting is no failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import DaemonProcess
from media import SilentServer, wait_until

from rvm_live.errors import SourceError, SourceNotReady
from rvm_live.io.sources.stream import StreamSource


@pytest.mark.slow
def test_an_rtsp_server_that_never_answers_is_not_up_yet(tmp_path):
    with SilentServer() as server:
        source = StreamSource(f"rtsp://127.0.0.1:{server.port}/cam")
        with pytest.raises(SourceNotReady, match=r"/cam: no (usable )?answer"):
            source.open()  # FFmpeg's RTSP timeout reports "Invalid data found": still a server not up
        source.close()
    assert server.accepted
    junk = tmp_path / "junk.mp4"  # the same FFmpeg error from a file is a real failure
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(SourceError, match=r"junk.mp4: cannot open: Invalid data found") as info:
        StreamSource(str(junk)).open()
    assert not isinstance(info.value, SourceNotReady)


@pytest.mark.slow
def test_a_daemon_waits_for_a_silent_rtsp_server(official_onnx_path):
    with SilentServer() as server, \
            DaemonProcess("--source", f"rtsp://127.0.0.1:{server.port}/cam", "-o", "null") as daemon:
        wait_until(lambda: len(server.accepted) >= 2 or daemon.proc.poll() is not None, 60, "a second attempt")
        assert daemon.proc.poll() is None, daemon.stderr
        assert daemon.get("/health")["source"] == "waiting"
        code = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.stderr, daemon.stderr


@pytest.mark.slow
def test_sigterm_while_the_source_is_being_opened_at_start_is_a_clean_stop():
    with SilentServer() as server:
        proc = subprocess.Popen([sys.executable, "-m", "rvm_live", "--source", f"rtsp://127.0.0.1:{server.port}/cam",
                                 "-o", "null"], stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "RVM_LIVE_OFFLINE": "1"})
        try:
            wait_until(lambda: server.accepted or proc.poll() is not None, 60, "the source's connection")
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=30)[1]
        finally:
            proc.kill()
    assert proc.returncode in (0, 128 + signal.SIGTERM), err
    assert "error" not in err.lower() and "Traceback" not in err, err
