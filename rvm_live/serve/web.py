"""Routes of the web page, dispatched to by the control server (``rvm_live/serve/control.py``).

- ``GET /`` and ``GET /static/NAME``: the page itself, public: it holds no data and performs nothing; what it
  shows and does goes through the token-guarded API.
- ``GET /stream.mjpg[?fps=N]``: the live output as MJPEG (``multipart/x-mixed-replace``), at most
  ``PREVIEW_FPS`` (or N) frames a second, for the page's ``<img>``, OBS's Media Source, VLC or FFmpeg.
  With a token it is needed as a bearer header or as ``?token=`` (``<img>``, OBS, VLC cannot send headers).
- ``POST /background/image``: an uploaded PNG/JPEG/WebP image (raw body) becomes the background; bearer
  token like the API, at most ``MAX_UPLOAD`` bytes and ``MAX_PIXELS`` pixels.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from PIL import Image

from ..io.sinks.mjpeg import MjpegTap, find_tap

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREVIEW_FPS = 12.0  # enough to judge a matte; a browser tab must not cost the pipeline CPU
MAX_STREAM_FPS = 60.0  # ``?fps=`` may ask for more, e.g. OBS taking the stream as its video source
MAX_UPLOAD = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a small file may still decode to a huge image (a "decompression bomb")
UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
BOUNDARY = "rvmlive-frame"
_DRAIN_LIMIT = 4 * MAX_UPLOAD  # an oversized upload up to this is read and dropped, so the client sees the 413
_ROUTES = {("GET", "/"), ("GET", "/stream.mjpg"), ("POST", "/background/image")}


def serves(method: str, path: str) -> bool:
    """Whether ``method path`` (path without query) is one of the web page's routes."""
    return (method, path) in _ROUTES or (method == "GET" and path.startswith("/static/"))


def handle(handler: BaseHTTPRequestHandler, path: str) -> None:
    """Answer one request of the web page. Errors are raised as the control server's ``HTTPError``."""
    if path == "/":
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{MAX_UPLOAD}}", str(MAX_UPLOAD))  # the page refuses big files before sending
        _reply(handler, 200, page.encode(), _CONTENT_TYPES[".html"])
    elif path.startswith("/static/"):
        _send_file(handler, _static_path(path[len("/static/"):]))
    elif path == "/stream.mjpg":
        _check_token(handler, allow_query=True)
        _stream(handler, _tap(handler), _stream_fps(handler))
    else:
        _check_token(handler, allow_query=False)
        _upload(handler)


def _http_error(status: int, message: str, headers: dict[str, str] | None = None) -> Exception:
    from .control import HTTPError  # imported late: control.py imports this module

    return HTTPError(status, message, headers)


def _check_token(handler: BaseHTTPRequestHandler, *, allow_query: bool) -> None:
    """The control API's own bearer-token rule (``_authorize``); with ``allow_query``, ``?token=`` also counts
    (an ``<img>`` or a media player cannot send headers)."""
    token = handler.server.app.token  # type: ignore[attr-defined]
    if token is not None and allow_query:
        given = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query).get("token", [])
        if any(hmac.compare_digest(g.encode(), token.encode()) for g in given):
            return
    handler._authorize()  # type: ignore[attr-defined]


def _static_path(name: str) -> Path:
    # only plain file names of the shipped directory: no "..", no subdirectories, no hidden files
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not name or not path.is_file():
        raise _http_error(404, f"no such file: /static/{name}")
    return path


def _send_file(handler: BaseHTTPRequestHandler, path: Path) -> None:
    _reply(handler, 200, path.read_bytes(), _CONTENT_TYPES.get(path.suffix, "application/octet-stream"))


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.wfile.write(body)


def _tap(handler: BaseHTTPRequestHandler) -> MjpegTap:
    tap = find_tap(handler.server.app.controller)  # type: ignore[attr-defined]
    if tap is None:
        raise _http_error(503, "no live preview: this controller has no preview output")
    return tap


def _stream_fps(handler: BaseHTTPRequestHandler) -> float:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
    text = (query.get("fps") or [str(PREVIEW_FPS)])[0]
    try:
        fps = float(text)
    except ValueError:
        fps = 0.0
    if not 0 < fps <= MAX_STREAM_FPS:
        raise _http_error(400, f"fps {text!r}: expected a number in (0, {MAX_STREAM_FPS:g}]")
    return fps


def _stream(handler: BaseHTTPRequestHandler, tap: MjpegTap, fps: float) -> None:
    """Send the tap's frames as multipart JPEG parts, at most ``fps`` a second, until the client leaves or
    the output closes."""
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
    handler.send_header("Cache-Control", "no-store")
    handler.send_header("Connection", "close")
    handler.end_headers()
    period, seq, sent = 1.0 / fps, 0, 0
    try:
        while True:
            started = time.monotonic()
            got = tap.wait_jpeg(seq, timeout=1.0)
            if got is None:
                if tap.closed:
                    break
                continue
            seq, jpeg = got
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            handler.wfile.write(head + jpeg + b"\r\n")
            handler.wfile.flush()
            sent += 1
            time.sleep(max(0.0, period - (time.monotonic() - started)))  # the rate cap
    except OSError as exc:  # the viewer went away (closed tab, stopped player): nothing to report
        log.debug("preview client %s left after %d frames: %s", handler.client_address[0], sent, exc)


def _content_length(handler: BaseHTTPRequestHandler) -> int:
    """The request's Content-Length, parsed (and refused with a 400) as the control API does."""
    return handler._content_length()  # type: ignore[attr-defined]  (control._Handler)


def _drain(handler: BaseHTTPRequestHandler, length: int) -> None:
    if length > _DRAIN_LIMIT:
        handler.close_connection = True
        return
    while length > 0:
        chunk = handler.rfile.read(min(length, 1 << 16))
        if not chunk:
            break
        length -= len(chunk)


def _upload(handler: BaseHTTPRequestHandler) -> None:
    ctype = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    length = _content_length(handler)
    if ctype not in UPLOAD_TYPES:
        _drain(handler, length)
        raise _http_error(415, f"upload type {ctype or 'none'!r}: expected one of {', '.join(UPLOAD_TYPES)}")
    if length > MAX_UPLOAD:
        _drain(handler, length)
        raise _http_error(413, f"upload of {length} bytes exceeds the {MAX_UPLOAD}-byte limit")
    if length == 0:
        raise _http_error(400, "empty upload: send the image file as the request body")
    data = handler.rfile.read(length)
    suffix = check_image(data, UPLOAD_TYPES[ctype])
    path = _UPLOADS.save(data, suffix)
    try:
        handler.server.app.controller.set_background(str(path))  # type: ignore[attr-defined]
    except Exception:
        _UPLOADS.discard(path)
        raise
    log.info("web page: background set to an uploaded %s image (%d bytes)", UPLOAD_TYPES[ctype], length)
    body = json.dumps({"ok": True, "bg": str(path)}).encode()
    _reply(handler, 200, body, "application/json")


def check_image(data: bytes, expected: str) -> str:
    """Check that ``data`` is a whole ``expected`` (PNG/JPEG/WEBP) image of sane size; its file suffix."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            found, (width, height) = img.format, img.size
            if found != expected:
                raise _http_error(415, f"upload is {found or 'unknown'} data, not the declared {expected}")
            if width * height > MAX_PIXELS:
                raise _http_error(413, f"upload of {width}x{height} pixels exceeds the {MAX_PIXELS}-pixel limit")
            img.load()  # decode it all: a truncated or corrupt file is refused here, not in the pipeline
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _http_error(415, f"upload is not a readable {expected} image: {exc}") from None
    return _SUFFIX[expected]


class _UploadDir:
    """Uploaded backgrounds in one private temporary directory; only the latest one is kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: tempfile.TemporaryDirectory[str] | None = None  # removed when the process ends
        self._count = 0
        self._latest: Path | None = None

    def save(self, data: bytes, suffix: str) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="rvm-live-upload-")
            self._count += 1
            path = Path(self._dir.name) / f"background-{self._count}{suffix}"
            path.write_bytes(data)
            previous, self._latest = self._latest, path
        if previous is not None:
            # the image background decodes its file when set, so the older upload is no longer read
            previous.unlink(missing_ok=True)
        return path

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)


_UPLOADS = _UploadDir()

