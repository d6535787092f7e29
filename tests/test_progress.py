"""Terminal progress: the real CLI with its stderr on a pseudo-terminal (a file job's bar, a live run's status
line), and without one (nothing drawn), plus the status line's and the frame count's own rules."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from rvm_live.progress import expected_frames, status_line

RUN_TIMEOUT_S = 180


def run_cli(args: list[str], *, tty: bool, columns: int = 100) -> tuple[int, str]:
    """Run ``python -m rvm_live ARGS`` with stderr on a pty (``tty``) or a pipe; (exit code, stderr text)."""
    cmd = [sys.executable, "-m", "rvm_live", *args]
    if not tty:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=RUN_TIMEOUT_S)
        return done.returncode, done.stderr.decode(errors="replace")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))  # as a terminal window
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.slow
def test_file_job_draws_a_bar_with_count_total_fps_and_eta(carphone_path):
    code, err = run_cli(["--source", str(carphone_path), "-o", "null", "--max-frames", "12"], tty=True)
    assert code == 0, err
    assert "matting: 100%" in err and "12/12" in err
    assert re.search(r"\d+/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+frame/s\]", err), err  # elapsed<ETA, frames/s
    assert "\r" in err  # redrawn in place
    assert re.search(r"INFO rvm_live: frames in 12, out 12", err)  # log lines still get through


@pytest.mark.slow
def test_live_run_draws_a_status_line_about_once_a_second(carphone_path):
    args = ["--source", str(carphone_path), "--loop", "--realtime", "-o", "null", "--max-frames", "150"]
    code, err = run_cli(args, tty=True)
    assert code == 0, err
    lines = [s for s in err.split("\r") if s.startswith("in ")]
    assert len(lines) >= 2, err  # 150 frames at the clip's 30 fps: about 5 s of status
    last = lines[-1]
    assert re.match(r"in [\d.]+ fps  out [\d.]+ fps  latency p50 \d+ ms p95 \d+ ms  drops \d+  ratio [\d.]+", last)
    assert "matting:" not in err  # a live run has no end to show a bar towards


@pytest.mark.parametrize("tty", [True, False], ids=["quiet-on-a-terminal", "stderr-not-a-terminal"])
@pytest.mark.slow
def test_nothing_is_drawn_with_quiet_or_without_a_terminal(carphone_path, tty):
    args = ["--source", str(carphone_path), "-o", "null", "--max-frames", "6"] + (["--quiet"] if tty else [])
    code, err = run_cli(args, tty=tty)
    assert code == 0, err
    assert "matting" not in err and "\r" not in err.replace("\r\n", "\n") and "frame/s" not in err
    assert "frames in 6, out 6" in err  # the logs are unchanged


def test_status_line_shows_the_quality_once_there_is_one():
    stats = {"frames_dropped": 4, "latency_ms": {"p50": 41.2, "p95": 87.9}, "downsample_ratio": 0.375}
    expected = "in 30.0 fps  out 25.0 fps  latency p50 41 ms p95 88 ms  drops 4  ratio 0.38"
    assert status_line(stats, 30.0, 24.96) == expected
    governed = {**stats, "quality": 0.5, "paused": True, "source_up": False}
    assert status_line(governed, None, None).endswith("drops 4  quality 0.50  PAUSED  SOURCE LOST")
    assert status_line({}, None, None) == "in - fps  out - fps  latency p50 - ms p95 - ms  drops 0"


def test_expected_frames_of_a_file(carphone_path, tmp_path):
    assert expected_frames(str(carphone_path)) == 120
    assert expected_frames(str(carphone_path), max_frames=30) == 30
    assert expected_frames("camera:0") is None and expected_frames("camera:0", max_frames=5) == 5
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert expected_frames(str(junk)) is None
