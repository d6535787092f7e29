"""The web page's routes, dispatched to by the control server after its Host/Origin checks:

- ``GET /`` and ``GET /static/NAME``: the page itself, public: it holds no data and performs nothing; what it
  shows and does goes through the token-guarded API.
- ``GET /stream.mjpg[?fps=N][&stream=ID]``: a stream's output as MJPEG (``multipart/x-mixed-replace``), at
  ``PREVIEW_FPS`` (or N, kept within ``MIN_STREAM_FPS``..``MAX_STREAM_FPS``) frames a second, for the page's
  ``<img>``, OBS's Media Source, VLC or FFmpeg. With a token, as a bearer header or ``?token=``. At most
  ``MAX_VIEWERS`` at once, each dropped when a frame cannot be written within ``WRITE_DEADLINE_S``.
- ``POST /background/image[?stream=ID]``: an uploaded PNG/JPEG/WebP image (raw body) becomes the background;
  bearer token like the API, at most ``MAX_UPLOAD`` bytes and ``MAX_PIXELS`` pixels, ``MAX_UPLOADS`` at once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ..io.sinks.mjpeg import MjpegTap
from .controller import Controller
from .http import HTTPError, RequestHandler, query_values
from .uploads import Uploads

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREVIEW_FPS = 12.0  # enough to judge a matte; a browser tab must not cost the pipeline CPU
MIN_STREAM_FPS = 1.0  # a slower ask is raised to this: a viewer's wait stays short
MAX_STREAM_FPS = 60.0  # ``?fps=`` may ask for more, e.g. OBS taking the stream as its video source
MAX_VIEWERS = 8  # previews at once; with MAX_UPLOADS, well under the worker pool, so the API always answers
MAX_UPLOADS = 2
WRITE_DEADLINE_S = 5.0  # a viewer that takes no frame for this long is dropped
MAX_UPLOAD = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a small file may still decode to a huge image (a "decompression bomb")
UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# the shipped files, listed once: a request names one of these or gets a 404 (no file system lookups)
STATIC_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and not p.name.startswith(".")}
BOUNDARY = "rvmlive-frame"
_ROUTES = {("GET", "/"), ("GET", "/stream.mjpg"), ("POST", "/background/image")}


def serves(method: str, path: str) -> bool:
    """Whether ``method path`` (path without query) is one of the web page's routes."""
    return (method, path) in _ROUTES or (method == "GET" and path.startswith("/static/"))


class Page:
    """The web page of one server: its caps on viewers and uploads, and its uploaded files."""

    def __init__(self) -> None:
        self.viewers = threading.BoundedSemaphore(MAX_VIEWERS)
        self.upload_slots = threading.BoundedSemaphore(MAX_UPLOADS)
        self.uploads = Uploads()

    def handle(self, handler: RequestHandler, controller: Controller, path: str) -> None:
        """Answer one request of the page; errors are raised as ``HTTPError``."""
        if path == "/":
            page = STATIC_FILES["index.html"].read_text(encoding="utf-8")
            page = page.replace("{{MAX_UPLOAD}}", str(MAX_UPLOAD))  # the page refuses big files before sending
            handler.send_body(200, page.encode(), _CONTENT_TYPES[".html"])
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
            if name not in STATIC_FILES:
                raise HTTPError(404, "no such file")
            file = STATIC_FILES[name]
            handler.send_body(200, file.read_bytes(), _CONTENT_TYPES.get(file.suffix, "application/octet-stream"))
        elif path == "/stream.mjpg":
            handler.authorize(query_token=True)
            tap, fps = _tap(controller, _stream_id(handler)), stream_fps(handler.path)
            with _slot(self.viewers, f"{MAX_VIEWERS} preview viewers already watch"):
                _stream(handler, tap, fps)
        else:
            handler.authorize()
            with _slot(self.upload_slots, "another upload is in progress"):
                self._upload(handler, controller)

    def close(self) -> None:
        """Remove the uploaded files (the server is closing)."""
        self.uploads.close()

    def _upload(self, handler: RequestHandler, controller: Controller) -> None:
        ctype = handler.content_type()
        length = handler.content_length()
        if ctype not in UPLOAD_TYPES:
            handler.discard_body(4 * MAX_UPLOAD)
            raise HTTPError(415, f"upload type {ctype or 'none'!r}: expected one of {', '.join(UPLOAD_TYPES)}")
        if length > MAX_UPLOAD:
            handler.discard_body(4 * MAX_UPLOAD)  # read, so that the client sees the answer
            raise HTTPError(413, f"upload of {length} bytes exceeds the {MAX_UPLOAD}-byte limit")
        if length == 0:
            raise HTTPError(400, "empty upload: send the image file as the request body")
        stream = _stream_id(handler)
        data = handler.read_exactly(length)  # 408 when it does not arrive within the request's deadline
        suffix = check_image(data, UPLOAD_TYPES[ctype])
        path = self.uploads.save(data, suffix)
        try:
            controller.set_background(str(path), stream)
        except BaseException:
            self.uploads.discard(path)
            raise
        log.info("web page: background set to an uploaded %s image (%d bytes)", UPLOAD_TYPES[ctype], length)
        handler.send_json(200, {"ok": True, "bg": str(path)})


@contextlib.contextmanager
def _slot(slots: threading.BoundedSemaphore, busy: str) -> Iterator[None]:
    """One of a capped number of places, or a 503 at once."""
    if not slots.acquire(blocking=False):
        raise HTTPError(503, f"server is busy: {busy}", {"Retry-After": "1"})
    try:
        yield
    finally:
        slots.release()


def _stream_id(handler: RequestHandler) -> str | None:
    given = query_values(handler.path, "stream")
    return given[-1] if given else None


def _tap(controller: Controller, stream: str | None) -> MjpegTap:
    try:
        sinks = controller.session(stream).sinks
    except KeyError as exc:
        raise HTTPError(404, str(exc.args[0])) from None
    except ValueError as exc:  # several streams and none named
        raise HTTPError(400, f"{exc} with ?stream=ID") from None
    tap = next((s for s in sinks if isinstance(s, MjpegTap)), None)
    if tap is None:
        raise HTTPError(503, "no live preview: this controller has no preview output")
    return tap


def stream_fps(path: str) -> float:
    """The frame rate a viewer asked for with ``?fps=``, kept within the limits; 400 for junk."""
    text = (query_values(path, "fps") or [str(PREVIEW_FPS)])[-1]
    try:
        fps = float(text)
    except ValueError:
        fps = math.nan
    if not 0 < fps < math.inf:
        raise HTTPError(400, f"fps {text!r}: expected a positive number (kept within "
                             f"{MIN_STREAM_FPS:g}..{MAX_STREAM_FPS:g})")
    return min(max(fps, MIN_STREAM_FPS), MAX_STREAM_FPS)


def _stream(handler: RequestHandler, tap: MjpegTap, fps: float) -> None:
    """Send the tap's frames as multipart JPEG parts, at most ``fps`` a second, until the viewer leaves, a
    frame cannot be written within ``WRITE_DEADLINE_S``, or the output closes."""
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
    handler.send_header("Cache-Control", "no-store")
    handler.send_header("Connection", "close")
    handler.end_headers()
    sock, period, seq, sent = handler.connection, 1.0 / fps, 0, 0
    sock.settimeout(WRITE_DEADLINE_S)  # per frame: sendall's timeout covers the whole part
    try:
        while True:
            started = time.monotonic()
            got = tap.wait_jpeg(seq, timeout=1.0)
            if got is None:
                if tap.closed or _gone(sock, 0.0):
                    break
                continue
            seq, jpeg = got
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            handler.wfile.write(head + jpeg + b"\r\n")
            sent += 1
            if _gone(sock, period - (time.monotonic() - started)):  # the rate cap, cut short if the viewer goes
                break
    except OSError as exc:  # the viewer went away or stopped reading: nothing to report
        log.debug("preview client %s left after %d frames: %s", handler.client_address[0], sent, exc)


def _gone(sock: socket.socket, wait_s: float) -> bool:
    """Wait up to ``wait_s``; True as soon as the viewer has closed its end (anything it sends is dropped)."""
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            return False
        try:
            if not sock.recv(4096, socket.MSG_DONTWAIT):
                return True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False


def check_image(data: bytes, expected: str) -> str:
    """Check that ``data`` is a whole ``expected`` (PNG/JPEG/WEBP) image of sane size; its file suffix."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            found, (width, height) = img.format, img.size
            if found != expected:
                raise HTTPError(415, f"upload is {found or 'unknown'} data, not the declared {expected}")
            if width * height > MAX_PIXELS:
                raise HTTPError(413, f"upload of {width}x{height} pixels exceeds the {MAX_PIXELS}-pixel limit")
            img.load()  # decode it all: a truncated or corrupt file is refused here, not in the pipeline
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPError(415, f"upload is not a readable {expected} image: {exc}") from None
    return _SUFFIX[expected]
