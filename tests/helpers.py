"""Helpers shared by the tests: a recording sink, a fake controller with a real HTTP request helper, and
clips made on the fly (clean and corrupt). Real media and real peers live in ``media.py``."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import av
import numpy as np
import pytest

from rvm_live.io.sinks.base import SinkBase
from rvm_live.serve.controller import ControllerBase


def write_clip(path, n=40, size=32) -> str:
    """``n`` frames whose grey level rises with the index (frame i is 6*i)."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 6 * i, np.uint8),
                                                           format="rgb24")))
        c.mux(stream.encode(None))
    return str(path)


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
