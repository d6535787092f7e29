"""Helpers shared by the tests: the CLI run to its end, the real daemon in a child process, a recording sink, a
fake controller with a real HTTP request helper, clips made on the fly (clean and corrupt), and plausibility
checks for benchmark figures. Real media and real peers live in ``media.py``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from media import free_port

from rvm_live.io.sinks.base import SinkBase
from rvm_live.serve.controller import ControllerBase

CHECKOUT = Path(__file__).resolve().parents[1]
# Debian's chromium package (.ci/run installs it); the browser tests skip without it
CHROMIUM = os.environ.get("RVM_LIVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def cli_env(*, offline: bool = True) -> dict[str, str]:
    """The environment of a ``python -m rvm_live`` child: this checkout first on the path, and offline (the
    tests' fixtures cache the weights and the clip; a child never goes to the network) unless told not to."""
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **({"RVM_LIVE_OFFLINE": "1"} if offline else {})}


def run_cli(*args: str, timeout: float = 300, cwd: str | Path | None = None, prefix: tuple[str, ...] = (),
            offline: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m rvm_live ARGS`` run to its end (under ``prefix``, e.g. a ``prlimit``), output captured as text."""
    return subprocess.run([*prefix, sys.executable, "-m", "rvm_live", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=cli_env(offline=offline))


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``python -m rvm_live ARGS`` started, with its stderr piped as text (read it to follow the run)."""
    return subprocess.Popen([sys.executable, "-m", "rvm_live", *args], stderr=subprocess.PIPE, text=True,
                            env=cli_env())


@contextlib.contextmanager
def chromium(*extra_args: str) -> Any:
    """Real headless Chromium through Playwright (``CHROMIUM_FLAGS`` plus ``extra_args``), closed at the end;
    skips the test where Chromium or Playwright is missing."""
    if CHROMIUM is None:
        pytest.skip("no chromium executable (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, *extra_args], headless=True)
        try:
            yield browser
        finally:
            browser.close()


class DaemonProcess:
    """``python -m rvm_live ARGS --control 127.0.0.1:PORT`` (``token``: with ``--control-token``); entering waits
    until the control API is up. Its stderr is read into ``stderr`` up to then and at the stop; ``log_path``
    sends stdout and stderr to that file instead (a daemon kept up for a whole module logs more than a pipe
    holds)."""

    def __init__(self, *args: str, token: str | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token, self.log_path = token, log_path
        self.args = [*args, "--control", f"127.0.0.1:{self.port}", *(["--control-token", token] if token else [])]
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def __enter__(self) -> DaemonProcess:
        cmd = [sys.executable, "-m", "rvm_live", *self.args]
        if self.log_path is None:
            self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=cli_env())
            lines = []
            for line in self.proc.stderr:
                lines.append(line)
                if "control API on" in line:
                    break
            self.stderr = "".join(lines)
            return self
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=cli_env())
        deadline = time.monotonic() + 120
        while "control API on" not in self.log() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return self

    def log(self) -> str:
        """What the daemon wrote so far (the log file, or the stderr read so far)."""
        return self.log_path.read_text(errors="replace") if self.log_path is not None else self.stderr

    def _request(self, path: str, body: Any = None, timeout: float = 10) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if body is not None else "GET",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str) -> dict[str, Any]:
        """GET ``path`` as JSON (any status)."""
        return self._request(path)[1]

    def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """POST ``body`` as JSON to ``path``: (status, JSON)."""
        return self._request(path, body, timeout=30)

    def wait_stats(self, check: Callable[[dict[str, Any]], bool], within: float = 60.0) -> dict[str, Any]:
        """Poll /stats until ``check`` holds; fails with the last stats and the daemon's log."""
        deadline, stats = time.monotonic() + within, {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            try:
                stats = self.get("/stats")
            except (urllib.error.URLError, ConnectionError):
                stats = {}
            if stats and check(stats):
                return stats
            time.sleep(0.25)
        pytest.fail(f"stats never matched within {within:g} s: {stats}\n{self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status (stderr is in ``self.stderr``)."""
        self.proc.send_signal(sig)
        self._finish(timeout)
        return self.proc.returncode

    def _finish(self, timeout: float | None) -> None:
        if self.log_path is None:
            self.stderr += self.proc.communicate(timeout=timeout)[1]
        else:
            self.proc.wait(timeout=timeout)
            self.stderr = self.log()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:  # not stopped by the test: killed, its log kept
            self.proc.kill()
            self._finish(None)


def write_frames(target: Any, frames: Any, *, rate: int = 10, crf: int | None = None, fmt: str | None = None,
                 container_options: dict[str, str] | None = None, codec: str = "libx264") -> str:
    """Encode ``frames`` (H x W x 3 RGB uint8, all one size) with ``codec`` at ``rate`` fps into ``target``: a
    path (its folder is made) or, with ``fmt``, a file object. Returns ``str(target)``."""
    frames = list(frames)
    if isinstance(target, (str, Path)):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        target = str(target)
    with av.open(target, "w", format=fmt, options=container_options or {}) as c:
        stream = c.add_stream(codec, rate=rate, options={"crf": str(crf)} if crf is not None else {})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        c.mux(stream.encode(None))
    return str(target)


def solid_frames(colours: Any, size: tuple[int, int] = (32, 32)) -> list[np.ndarray]:
    """One ``size`` (height, width) frame of each RGB colour (or grey level) in ``colours``."""
    return [np.full((*size, 3), colour, np.uint8) for colour in colours]


def write_clip(path, n=40, size=32) -> str:
    """``n`` frames whose grey level rises with the index (frame i is 6*i)."""
    return write_frames(path, solid_frames([6 * i for i in range(n)], (size, size)))


def corrupt_clip(path) -> str:
    """An MP4 whose middle third is junk: it opens and decodes a few frames, then FFmpeg raises."""
    write_clip(path)
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third: 2 * third] = np.random.default_rng(0).integers(0, 256, third, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    decoded = 0
    with pytest.raises(av.FFmpegError), av.open(str(path)) as c:  # the fault is real
        for _ in c.decode(video=0):
            decoded += 1
    assert decoded >= 1
    return str(path)


MS_PER_FRAME = (0.1, 60_000.0)  # any machine takes more than 0.1 ms and less than a minute for one frame


def assert_plausible_ms(latency_ms: dict) -> None:
    """Per-frame times in ms that hang together: every figure within ``MS_PER_FRAME``, p50 <= p95 <= max."""
    low, high = MS_PER_FRAME
    assert all(low <= value <= high for value in latency_ms.values()), latency_ms
    assert latency_ms["p50"] <= latency_ms["p95"] <= latency_ms.get("max", latency_ms["p95"]), latency_ms


def assert_timed_row(row: dict, frames: int) -> None:
    """A benchmark's timed section: ``frames`` frames, plausible per-frame times, and an fps that is the frames
    over their total time (1000 / mean ms)."""
    assert row["frames"] == frames, row
    assert_plausible_ms(row["latency_ms"])
    assert row["fps"] == pytest.approx(1000 / row["latency_ms"]["mean"], rel=0.01), row


class FakeController(ControllerBase):
    """Records what the API asked for; ``fail_with`` makes the next set_background raise."""

    def __init__(self, outputs=None):
        super().__init__(outputs)
        self.calls: list[str] = []
        self.background = "green"
        self.paused = False
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def health(self, stream=None):
        return {"ok": True, "paused": self.paused}

    def stats(self, stream=None):
        return {
            "frames_in": 120, "frames_out": 117, "frames_dropped": 3, "fps_out": 29.5,
            "latency_ms": {"p50": 40.0, "p95": 55.0, "max": 80.0}, "background": self.background,
            "backbone": "mobilenetv3", "device": "cpu", "downsample_ratio": 0.25, "paused": self.paused,
        }

    def set_background(self, spec, stream=None):
        with self.lock:
            if self.fail_with is not None:
                exc, self.fail_with = self.fail_with, None
                raise exc
            self.calls.append(f"bg:{spec}")
            self.background = spec

    def pause(self, stream=None):
        self.calls.append("pause")
        self.paused = True

    def resume(self, stream=None):
        self.calls.append("resume")
        self.paused = False

    def reset(self, stream=None):
        self.calls.append("reset")


class TapController(FakeController):
    """A controller whose output is a real preview tap, fed by a :class:`Feeder`; set_background reads the
    file as the pipeline does (an unreadable one raises OSError)."""

    def __init__(self) -> None:
        from rvm_live.io.sinks.mjpeg import MjpegTap

        self.tap = MjpegTap()
        super().__init__([self.tap])
        self.backgrounds: list[str] = []

    def set_background(self, spec, stream=None):
        if "/" in spec:
            import cv2

            if cv2.imread(spec) is None:
                raise OSError(f"cannot read {spec}")
            self.backgrounds.append(spec)
        super().set_background(spec, stream)


class Feeder:
    """Writes numbered solid-colour frames (or noise, which encodes big) into a tap from its own thread,
    like a sink worker."""

    def __init__(self, tap, fps: float = 100.0, *, size=(48, 64), noise: bool = False) -> None:
        self.tap, self.period, self.size, self.noise = tap, 1.0 / fps, size, noise
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from rvm_live.frame import Frame

        index, rng = 0, np.random.default_rng(0)
        while not self.stop.wait(self.period):
            if self.noise:
                image = rng.integers(0, 256, (*self.size, 3), np.uint8)
            else:
                image = np.full((*self.size, 3), (index * 7) % 256, np.uint8)
            self.tap.write(Frame(index, time.monotonic_ns(), "test", image))
            index += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(2)


def request(server, method, path, body=None, *, token=None, raw=None):
    """(status, parsed JSON or text, headers) of one real HTTP request."""
    host, port = server.address
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    if data is not None or method == "POST":  # the API takes JSON only on what changes state
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers, text = resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, headers, text = err.code, err.headers, err.read().decode()
    is_json = headers.get("Content-Type", "").startswith("application/json")
    return status, (json.loads(text) if is_json else text), headers


class RecordingSink(SinkBase):
    """A real in-process sink that keeps every frame it is given (with its arrival time)."""

    accepts_alpha = True

    def __init__(self, name: str = "record", *, live: bool = False, block: threading.Event | None = None):
        self.name, self.live, self.block = name, live, block
        self.frames: list = []
        self.opened: list[tuple[int, int, float]] = []
        self.closed = 0

    def open(self, width: int, height: int, fps: float) -> None:
        self.opened.append((width, height, fps))

    def write(self, frame) -> None:
        if self.block is not None:
            self.block.wait()  # a stuck output: never returns until the test lets it
        self.frames.append((time.monotonic(), frame))

    def close(self) -> None:
        self.closed += 1



def read_all(sock) -> str:
    """Everything a server sends on ``sock`` until it closes the connection (headers and body may arrive in
    separate packets)."""
    parts = []
    while chunk := sock.recv(4096):
        parts.append(chunk)
    return b"".join(parts).decode()
