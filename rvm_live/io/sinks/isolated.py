"""Network outputs run in a writer process, so a peer can stall nothing but that process.

PyAV holds the GIL while it connects and writes (``avformat_write_header``, ``av_interleaved_write_frame``),
and RTMP connects without any timeout: in-process, a server that accepts and never answers froze every
thread, the control API and the signal handlers with them. Here the daemon's side only waits on a pipe,
with a deadline for every step; a writer that misses one is killed, and the sink worker's reconnect path
starts a fresh one. The writer process imports PyAV and numpy only (no torch).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ...errors import SinkError
from .base import SinkBase
from .stream import StreamSink

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame

log = logging.getLogger(__name__)

OPEN_DEADLINE_S = 6.0  # connecting: the in-process connect timeout is 5 s where FFmpeg has one
WRITE_DEADLINE_S = 2.0  # one frame: a peer that takes longer is treated as gone
CLOSE_DEADLINE_S = 1.0
POLL_S = 0.05
_SPAWN = mp.get_context("spawn")  # never fork a process that runs torch threads


def _writer(spec: str, config: Config, conn: Connection) -> None:
    """The writer process: open, write and close a StreamSink as the daemon asks, acknowledging each step."""
    from ...frame import Frame

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle; it ends us
    _die_with_parent()
    sink = StreamSink(spec, config)
    try:
        while True:
            message = conn.recv()
            kind = message[0]
            try:
                if kind == "open":
                    sink.open(*message[1:])
                elif kind == "frame":
                    sink.write(Frame(*message[1:]))
                else:
                    sink.close()
            except SinkError as exc:
                conn.send(("error", str(exc)))
                return
            conn.send(("ok",))
            if kind == "close":
                return
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the daemon went away (or killed the pipe): nothing left to write for
    finally:
        sink.close()


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the daemon dies, even mid-connect (SIGKILL, os._exit)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the pipe's EOF ends us instead
        pass


class IsolatedSink(SinkBase):
    """A live StreamSink (``rtsp://``, ``rtmp://``, ``srt://``, ``udp://``) driven in a writer process.

    ``write()`` hands a frame over and returns; the next call first waits (at most ``WRITE_DEADLINE_S``) for
    the writer to finish the previous one, so encoding overlaps the daemon's own work."""

    live = True
    accepts_alpha = False

    def __init__(self, spec: str, config: Config) -> None:
        StreamSink(spec, config)  # validate the URL now, in this process, like any other output
        self.name = spec
        self.config = config
        self.frames_written = 0
        self._process: Any = None
        self._conn: Connection | None = None
        self._busy = False  # a frame was sent and not yet acknowledged
        self._cancel: threading.Event | None = None

    def cancel_on(self, event: threading.Event) -> None:
        """Stop waiting for the writer as soon as ``event`` is set (the pipeline's stop event)."""
        self._cancel = event

    def open(self, width: int, height: int, fps: float) -> None:
        """Start a fresh writer process and connect; SinkError when it fails or misses the deadline."""
        self.close()
        ours, theirs = _SPAWN.Pipe()
        process = _SPAWN.Process(target=_writer, args=(self.name, self.config, theirs), daemon=True,
                                 name=f"rvm-writer {self.name}")
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        self._request(("open", width, height, fps), OPEN_DEADLINE_S, "connecting")

    def write(self, frame: Frame) -> None:
        """Hand ``frame`` to the writer after it has finished the previous one."""
        if self._conn is None:
            raise SinkError(f"output {self.name}: write() before open()")
        if self._busy:
            self._reply(WRITE_DEADLINE_S, "writing")
        self._send(("frame", frame.index, frame.capture_ns, frame.stream_id, frame.image))
        self._busy = True
        self.frames_written += 1

    def close(self) -> None:
        """Finish the writer (briefly: a live stream has nothing worth waiting for) or kill it."""
        if self._process is None:
            return
        try:
            if self._busy:
                self._reply(CLOSE_DEADLINE_S, "finishing a frame")
            self._request(("close",), CLOSE_DEADLINE_S, "closing")
        except SinkError as exc:
            log.debug("%s", exc)
        self._kill()

    def _request(self, message: tuple[Any, ...], deadline: float, doing: str) -> None:
        self._send(message)
        self._busy = True
        self._reply(deadline, doing)

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)  # the writer only ever waits in recv() here: this does not block
        except (OSError, ValueError) as exc:
            self._kill()
            raise SinkError(f"output {self.name}: the writer process is gone ({exc})") from exc

    def _reply(self, deadline: float, doing: str) -> None:
        """Wait for the writer's acknowledgement; kill it and raise SinkError when it fails or is late."""
        conn, end, answer = self._conn, time.monotonic() + deadline, None
        try:
            while answer is None:
                if conn.poll(POLL_S):
                    answer = conn.recv()
                elif time.monotonic() > end or (self._cancel is not None and self._cancel.is_set()):
                    break
        except (EOFError, OSError) as exc:
            self._kill()
            raise SinkError(f"output {self.name}: the writer process died while {doing}") from exc
        if answer is None:
            self._kill()
            raise SinkError(f"output {self.name}: no progress for {deadline:g} s while {doing}; "
                            "abandoned the connection")
        self._busy = False
        if answer[0] != "ok":
            self._kill()
            raise SinkError(answer[1])

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._busy = False
        if conn is not None:
            conn.close()
        if process is not None:
            process.join(0.2)  # after "close" it is on its way out; otherwise it is stuck: kill it
            if process.is_alive():
                process.kill()
                process.join(1.0)
