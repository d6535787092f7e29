"""What must not freeze the control API: slowloris heads, slow or stalled uploads, preview viewers that
never read or ask for absurd frame rates. Real sockets on loopback, a real preview tap fed by a thread."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest
from helpers import Feeder, read_all, request

from rvm_live.serve import web

TOKEN = "t"
DEADLINE_S = 2.0


@pytest.fixture
def server_options():
    return {"request_deadline_s": DEADLINE_S}


def api_answers(server) -> None:
    """/health, /pause and /resume each answer 200 (the helper's timeout is 10 s; they take milliseconds)."""
    assert request(server, "GET", "/health")[0] == 200
    assert request(server, "POST", "/pause")[0] == 200
    assert request(server, "POST", "/resume")[0] == 200


class Trickle(threading.Thread):
    """Sends ``data`` one byte every ``gap`` seconds (a slowloris client), then reads the answer."""

    def __init__(self, server, data: bytes, gap: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(server.address, timeout=60)
        self.data, self.gap, self.answer = data, gap, ""

    def run(self) -> None:
        try:
            for i in range(len(self.data)):
                self.sock.sendall(self.data[i:i + 1])
                time.sleep(self.gap)
        except OSError:
            pass  # cut off: the answer is waiting
        try:
            self.answer = read_all(self.sock)
        except OSError as exc:
            self.answer = f"error: {exc}"
        finally:
            self.sock.close()


@pytest.mark.slow
def test_slowloris_heads_do_not_hold_the_api(server, controller):
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"
    slow = [Trickle(server, head) for _ in range(40)]
    for t in slow:
        t.start()
    time.sleep(1.0)  # they are all mid-head now
    api_answers(server)
    for t in slow:
        t.join(30)
    # the whole request had DEADLINE_S to arrive, not DEADLINE_S per byte
    assert all(t.answer.startswith("HTTP/1.0 408") for t in slow), {t.answer[:40] for t in slow}


def upload_head(length: int) -> bytes:
    return (b"POST /background/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: %d\r\n\r\n" % length)


@pytest.mark.slow
def test_slow_uploads_are_cut_off_with_408_and_do_not_hold_the_api(server, controller):
    slow = [Trickle(server, upload_head(200_000) + b"\x89PNG" + b"\0" * 40, gap=0.3) for _ in range(20)]
    for t in slow:
        t.start()
    time.sleep(1.0)
    api_answers(server)
    for t in slow:
        t.join(60)
    statuses = {t.answer[:12] for t in slow}
    assert statuses <= {"HTTP/1.0 408", "HTTP/1.0 503"} and "HTTP/1.0 408" in statuses, statuses
    assert controller.backgrounds == []


@pytest.mark.slow
def test_a_stalled_upload_is_408_not_422(server, controller):
    with socket.create_connection(server.address, timeout=30) as s:
        s.sendall(upload_head(200_000) + b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)  # then nothing more
        answer = read_all(s)
    assert answer.startswith("HTTP/1.0 408") and f"not received within {DEADLINE_S:g} s" in answer
    assert controller.backgrounds == []


def never_reading_viewer(server, path="/stream.mjpg?fps=60") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: its buffers fill fast
    sock.connect(server.address)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def status_of(sock: socket.socket) -> int:
    sock.settimeout(10)
    return int(sock.recv(12).split()[1])


def test_preview_viewers_that_never_read_leave_the_api_answering(server):
    viewers = [never_reading_viewer(server) for _ in range(16)]
    try:
        time.sleep(1.0)
        api_answers(server)
        statuses = [status_of(v) for v in viewers]
        assert statuses.count(200) == web.MAX_VIEWERS and statuses.count(503) == 16 - web.MAX_VIEWERS
    finally:
        for v in viewers:
            v.close()


@pytest.mark.slow
def test_a_viewer_that_never_reads_is_dropped_at_the_write_deadline(controller, start_control, monkeypatch):
    monkeypatch.setattr(web, "WRITE_DEADLINE_S", 1.0)
    server = start_control(controller)
    viewers = []
    with Feeder(controller.tap, fps=60, size=(480, 640), noise=True):  # ~0.5 MB a frame: buffers fill at once
        try:
            viewers = [never_reading_viewer(server) for _ in range(web.MAX_VIEWERS)]
            time.sleep(0.5)
            assert status_of(never_reading_viewer(server)) == 503  # the places are taken
            deadline, status = time.monotonic() + 30, 503
            while status == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
                probe = never_reading_viewer(server)
                status = status_of(probe)
                probe.close()
            assert status == 200  # the stuck viewers were dropped, their places freed
        finally:
            for v in viewers:
                v.close()
    controller.tap.close()


def parts_arrive(server, path: str, want: int, timeout: float) -> bool:
    """Whether a watching client of ``path`` receives ``want`` JPEG parts before ``timeout`` seconds pass."""
    conn = http.client.HTTPConnection(*server.address, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    deadline, parts = time.monotonic() + timeout, 0
    try:
        while parts < want and time.monotonic() < deadline:
            line = resp.fp.readline()
            parts += line.strip() == f"--{web.BOUNDARY}".encode()
    except TimeoutError:  # nothing at all for the whole timeout: the worker is parked
        pass
    finally:
        resp.close()
        conn.close()
    return parts >= want


@pytest.mark.parametrize("fps", ["0.001", "1e-300", "5e-324"])
@pytest.mark.slow
def test_an_absurdly_slow_rate_is_raised_to_the_minimum(server, fps):
    # not a parked worker (a part every 1000 s or never), nor an OverflowError inside the stream: parts at
    # MIN_STREAM_FPS, so three arrive well within the (generous, load-proof) timeout
    assert web.MIN_STREAM_FPS >= 0.5
    assert parts_arrive(server, f"/stream.mjpg?fps={fps}", 3, timeout=30)


@pytest.mark.slow
def test_a_viewers_wait_ends_when_the_viewer_goes(server, controller):
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request("GET", "/stream.mjpg?fps=1")
    resp = conn.getresponse()
    resp.fp.readline()  # the first part is on its way
    resp.close()
    conn.close()
    time.sleep(2.5)  # more than the 1 s between frames: a server still waiting would encode another
    assert controller.tap.encoded == 1
