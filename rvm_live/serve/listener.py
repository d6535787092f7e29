"""The control server's front end: one thread accepts connections and reads each request's head (and a
small body) without blocking, under one deadline for the whole request; only a complete request reaches
the fixed pool of workers.

So a slow client (one header byte a second, a stalled body) costs a buffer, never a worker, and is cut off
with a 408 when its deadline passes; a flood of silent connections leaves the workers free for real
requests. When the pool's queue is full, a request gets a 503 at once.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .http import MAX_BODY, Connection

log = logging.getLogger(__name__)

WORKERS = 16  # requests served at once (previews and uploads have their own, smaller caps inside this)
QUEUED = 64  # complete requests waiting for a worker; beyond that they get a 503
BACKLOG = 64
MAX_HEAD = 64 * 1024  # request line and headers
MAX_PENDING = 512  # connections still sending their request; beyond that the oldest is dropped
POLL_S = 0.1
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _answer(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nRetry-After: 1\r\n\r\n").encode() + body


class _Pending:
    """A connection whose request is still arriving."""

    __slots__ = ("sock", "address", "buffer", "deadline", "needed")

    def __init__(self, sock: socket.socket, address: tuple, deadline: float) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.buffer = bytearray()
        self.needed: int | None = None  # bytes of head + small body, once the head is complete


def _head_end(buffer: bytearray) -> int:
    """Where the head ends (after its blank line), or -1."""
    ends = [i + n for i, n in ((buffer.find(b"\r\n\r\n"), 4), (buffer.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


def _small_body(head: bytes) -> int:
    """The body length to read up front: Content-Length when at most ``MAX_BODY`` (bigger ones, uploads,
    are read by the worker, under the same deadline)."""
    found = _CONTENT_LENGTH.search(head)
    length = int(found.group(1)) if found else 0
    return length if length <= MAX_BODY else 0


class Listener:
    """Listens on ``address`` at once (so a port in use fails here); ``start()`` runs the front end and
    hands every complete request to ``handle(connection, client_address)`` on a worker."""

    def __init__(self, address: tuple[str, int], handle: Callable[[Connection, tuple], None], *,
                 deadline_s: float) -> None:
        self._handle, self.deadline_s = handle, deadline_s
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(BACKLOG)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.address = self._sock.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._pending: dict[socket.socket, _Pending] = {}
        self._ready: queue.Queue[tuple[Connection, tuple] | None] = queue.Queue(QUEUED)
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the workers and the front end's thread, ``rvm-control``."""
        self._workers = [threading.Thread(target=self._work, name=f"rvm-control-{i}", daemon=True)
                         for i in range(WORKERS)]
        for worker in self._workers:
            worker.start()
        self._thread = threading.Thread(target=self._serve, name="rvm-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(POLL_S):
                    if key.fileobj is self._sock:
                        self._accept()
                    else:
                        self._read(key.data)
                self._expire()
        finally:
            for pending in list(self._pending.values()):
                self._drop(pending)
            self._selector.close()
            self._sock.close()
            for _ in self._workers:
                try:
                    self._ready.put_nowait(None)
                except queue.Full:
                    break  # daemon threads: they end with the process

    def close(self) -> None:
        """Stop accepting and release the port (idempotent); requests being served finish on their own."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        elif self._sock.fileno() >= 0:  # never started
            self._selector.close()
            self._sock.close()

    def _accept(self) -> None:
        try:
            sock, address = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of file descriptors, say: keep serving the others
            log.debug("control API: accept failed: %s", exc)
            return
        if len(self._pending) >= MAX_PENDING:  # the oldest slow sender makes room
            self._drop(next(iter(self._pending.values())))
        sock.setblocking(False)
        pending = _Pending(sock, address, time.monotonic() + self.deadline_s)
        self._pending[sock] = pending
        self._selector.register(sock, selectors.EVENT_READ, pending)

    def _read(self, pending: _Pending) -> None:
        try:
            chunk = pending.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away (or reset) before its request was complete
            self._drop(pending)
            return
        pending.buffer += chunk
        if pending.needed is None:
            end = _head_end(pending.buffer)
            if end < 0:
                if len(pending.buffer) > MAX_HEAD:
                    self._refuse(pending, "431 Request Header Fields Too Large",
                                 f"request head over {MAX_HEAD} bytes")
                return
            pending.needed = end + _small_body(bytes(pending.buffer[:end]))
        if len(pending.buffer) >= pending.needed:
            self._forget(pending)
            pending.sock.setblocking(True)
            connection = Connection(pending.sock, bytes(pending.buffer), pending.deadline)
            try:
                self._ready.put_nowait((connection, pending.address))
            except queue.Full:
                self._refuse(pending, "503 Service Unavailable", "server is busy")

    def _expire(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._refuse(pending, "408 Request Timeout", f"request not received within {self.deadline_s:g} s")

    def _refuse(self, pending: _Pending, status: str, message: str) -> None:
        try:
            pending.sock.setblocking(False)
            pending.sock.send(_answer(status, message))  # best effort: a tiny answer fits the socket buffer
        except OSError:
            pass
        self._drop(pending)

    def _forget(self, pending: _Pending) -> None:
        if self._pending.pop(pending.sock, None) is not None:
            self._selector.unregister(pending.sock)

    def _drop(self, pending: _Pending) -> None:
        self._forget(pending)
        pending.sock.close()

    def _work(self) -> None:
        while (item := self._ready.get()) is not None:
            connection, address = item
            try:
                self._handle(connection, address)
            finally:
                try:
                    connection.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                connection.sock.close()
