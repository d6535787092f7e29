"""Test helpers: real protocol peers on 127.0.0.1 run in child processes, and media decoding.

Peers run in *processes*, not threads: PyAV holds the GIL while an output container connects
(``avformat_write_header``), so a listener thread in the same interpreter could never answer it.
Every peer has its own FFmpeg timeouts and is killed by :class:`Peer` on exit, so no test can hang.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

SPAWN = mp.get_context("spawn")  # a clean interpreter: no inherited threads or FFmpeg state


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_summary(frames: list[np.ndarray]) -> dict[str, Any]:
    """What a receiving peer reports: how many frames, their shape, the last one's mean colour."""
    last = frames[-1] if frames else None
    return {
        "count": len(frames),
        "shape": list(last.shape) if last is not None else None,
        "mean_rgb": last.reshape(-1, 3).mean(0).tolist() if last is not None else None,
    }


def receive(url: str, options: dict[str, str], fmt: str | None, want: int, stop: Any, out: Any) -> None:
    """Child process: open ``url`` as a listening server, decode ``want`` frames, report a summary."""
    frames: list[np.ndarray] = []
    try:
        with av.open(url, format=fmt, options=options) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) >= want:
                    break
        out.put({"ok": True, **frame_summary(frames)})
    except Exception as exc:  # report, don't die silently: the test prints it
        out.put({"ok": False, "error": repr(exc), **frame_summary(frames)})


def send(
    url: str, rgb: tuple[int, int, int], size: tuple[int, int], seconds: float, stop: Any, out: Any
) -> None:
    """Child process: push solid-colour frames through rvm-live's own StreamSink until ``stop``."""
    _send(url, size, seconds, stop, out, lambda index: rgb)


def ramp_level(index: int) -> int:
    """The grey level of frame ``index`` from :func:`send_ramp`: 40, 45, ... up to 190 at frame 30, then flat."""
    return 40 + 5 * min(index, 30)


def send_ramp(url: str, size: tuple[int, int], seconds: float, stop: Any, out: Any) -> None:
    """Child process: like :func:`send`, but frame ``i`` is grey at ``ramp_level(i)``, so a receiver can tell
    which frame it decoded first."""
    _send(url, size, seconds, stop, out, lambda index: (ramp_level(index),) * 3)


def _send(url: str, size: tuple[int, int], seconds: float, stop: Any, out: Any, colour: Any) -> None:
    from rvm_live.config import Config
    from rvm_live.frame import Frame
    from rvm_live.io.sinks.stream import StreamSink

    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    sink = StreamSink(url, Config())
    sink.open(width, height, 30.0)
    out.put({"first_frame_at": time.time()})  # wall clock: a test may time what follows the first packet
    deadline = time.monotonic() + seconds
    index = 0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            image[:] = colour(index)
            sink.write(Frame(index, time.monotonic_ns(), "peer", image))
            index += 1
            time.sleep(1 / 30)
    finally:
        sink.close()


def counter_colour(index: int) -> tuple[int, int, int]:
    """A solid colour that encodes ``index`` (0..4095) coarsely enough to survive H.264: see :func:`counter_of`."""
    return (index % 64) * 4, (index // 64 % 64) * 4, 128


def counter_of(image: np.ndarray) -> int:
    """The index :func:`counter_colour` encoded in a decoded frame."""
    r, g = (int(round(float(c) / 4)) for c in image.reshape(-1, 3).mean(0)[:2])
    return (g % 64) * 64 + r % 64


def send_counter(url: str, size: tuple[int, int], seconds: float, stop: Any, out: Any) -> None:
    """Child process: like :func:`send`, frame ``i`` in :func:`counter_colour` (a receiver can tell how late it is)."""
    _send(url, size, seconds, stop, out, counter_colour)


def send_ts(url: str, size: tuple[int, int], seconds: float, codec: str, muxer: dict[str, str], stop: Any,
            out: Any) -> None:
    """Child process: an MPEG-TS sender of solid frames with its own ``codec`` and muxer options (its PIDs:
    ``mpegts_start_pid``, ``mpegts_pmt_start_pid``), as a different encoder would send."""
    width, height = size
    with av.open(url, "w", format="mpegts", options=muxer) as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 15
        out.put({"first_frame_at": time.time()})
        deadline, index = time.monotonic() + seconds, 0
        while not stop.is_set() and time.monotonic() < deadline:
            image = np.full((height, width, 3), (30, 200, 30), np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
            index += 1
            time.sleep(1 / 30)


def try_open_sink(url: str, stop: Any, out: Any) -> None:
    """Child process: open a StreamSink at ``url`` and report the error type and message."""
    from rvm_live.config import Config
    from rvm_live.io.sinks.stream import StreamSink

    try:
        StreamSink(url, Config()).open(176, 144, 30.0)
        out.put({"error": None, "message": ""})
    except Exception as exc:
        out.put({"error": type(exc).__name__, "message": str(exc)})


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends or reads a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class Peer:
    """A child process running one of the functions above (called with ``*args, stop, out``), with a
    stop event and a result queue; killed on exit."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.results: Any = SPAWN.Queue()
        self.stop = SPAWN.Event()
        self.process = SPAWN.Process(target=target, args=(*args, self.stop, self.results), daemon=True)

    def __enter__(self) -> Peer:
        self.process.start()
        return self

    def result(self, timeout: float) -> dict[str, Any]:
        """The peer's report; fails the test (with a clear message) when none comes in ``timeout``."""
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"peer {self.process.name} reported nothing within {timeout} s") from None

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def open_with_retry(sink: Any, width: int, height: int, fps: float, within: float = 15.0) -> int:
    """Call ``sink.open`` until the peer's listener is up (each refusal is a SinkError); returns tries.

    This is also the pipeline's reconnection path: a failed ``open()`` followed by another ``open()``."""
    from rvm_live.errors import SinkError

    deadline = time.monotonic() + within
    tries = 0
    while True:
        tries += 1
        try:
            sink.open(width, height, fps)
            return tries
        except SinkError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def decode_file(path: str | Path, fmt: str = "rgb24") -> list[np.ndarray]:
    """Every frame of a file as ``fmt`` arrays; VP9 through libvpx, the decoder that reads alpha."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.codec_context.name == "vp9":
            decoder = av.CodecContext.create("libvpx-vp9", "r")
            frames = [f for packet in container.demux(stream) for f in decoder.decode(packet)]
        else:
            frames = list(container.decode(stream))
    return [f.to_ndarray(format=fmt) for f in frames]


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- fake pyvirtualcam backends (registered like the real v4l2loopback / OBS ones) ---------------------


class RecordingBackend:
    """A real pyvirtualcam backend (registered like v4l2loopback) that keeps what it is sent."""

    instances: list[RecordingBackend] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "/dev/video-recorder"
        self.frames: list[np.ndarray] = []
        self.sent_at: list[float] = []
        self.closed = 0
        RecordingBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        # pyvirtualcam hands over a flat C-contiguous buffer in the camera's pixel format
        assert frame.size == self.width * self.height * 3
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())
        self.sent_at.append(time.perf_counter())

    def close(self) -> None:
        self.closed += 1

    def device(self) -> str:
        return self._device

    def native_fourcc(self) -> int:
        return self.fourcc


class BrokenBackend:
    """A backend whose device is taken, as when another app holds the loopback device."""

    def __init__(self, **kw):
        raise RuntimeError("device /dev/video42 is busy")
