"""The web page's routes over real HTTP on loopback: static files, the MJPEG preview from the output tap,
image uploads, and the token rule. The controller is a small in-test one whose only output is the tap."""

from __future__ import annotations

import http.client
import io
import json
import struct
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rvm_live.io.sinks.base import create_sink
from rvm_live.io.sinks.mjpeg import MjpegTap, encode_jpeg
from rvm_live.serve.web import BOUNDARY, MAX_PIXELS, MAX_STREAM_FPS, MAX_UPLOAD, PREVIEW_FPS

TOKEN = "page-token"


@pytest.fixture
def server_options():
    return {"token": TOKEN}


def call(server, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request; the body is read whole (not for the stream)."""
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def auth(**extra):
    return {"Authorization": f"Bearer {TOKEN}", **extra}


def open_stream(server, path="/stream.mjpg", headers=None):
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request("GET", path, headers=headers or {})
    return conn, conn.getresponse()


def read_part(resp) -> bytes:
    """One JPEG part of a multipart/x-mixed-replace body."""
    line = resp.fp.readline()
    while line.strip() == b"":
        line = resp.fp.readline()
    assert line.strip() == f"--{BOUNDARY}".encode()
    headers = {}
    while (line := resp.fp.readline().strip()):
        key, _, value = line.decode().partition(":")
        headers[key.lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    data = resp.fp.read(int(headers["content-length"]))
    assert resp.fp.read(2) == b"\r\n"
    return data


def png_bytes(width=32, height=24, colour=(0, 0, 255), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels: tiny on the wire, huge once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_page_and_its_files_are_served_without_a_token(server):
    status, headers, body = call(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<img id="preview"' in body and f'data-max-upload="{MAX_UPLOAD}"'.encode() in body
    status, headers, body = call(server, "GET", "/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"/stream.mjpg" in body
    assert call(server, "GET", "/static/style.css")[0] == 200
    for bad in ("/static/nope.js", "/static/../routes.py", "/static/%2e%2e/routes.py", "/static/.hidden"):
        assert call(server, "GET", bad)[0] == 404, bad
    assert call(server, "GET", "/stats")[0] == 401  # the data behind the page keeps the token rule


def test_stream_needs_the_token_as_bearer_header_or_query(server):
    assert call(server, "GET", "/stream.mjpg")[0] == 401
    assert call(server, "GET", "/stream.mjpg?token=wrong")[0] == 401
    assert call(server, "GET", "/stream.mjpg", headers={"Authorization": "Bearer wrong"})[0] == 401
    for path, headers in (("/stream.mjpg", auth()), (f"/stream.mjpg?token={TOKEN}&t=1", {})):
        conn, resp = open_stream(server, path, headers)
        try:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            image = cv2.imdecode(np.frombuffer(read_part(resp), np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (48, 64, 3)
        finally:
            conn.close()


def count_parts(server, path: str, seconds: float = 1.5) -> tuple[int, float]:
    """JPEG parts a watching client receives from ``path`` over ``seconds`` (after the first one)."""
    conn, resp = open_stream(server, path, auth())
    try:
        read_part(resp)
        start, parts = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            read_part(resp)
            parts += 1
        return parts, time.monotonic() - start
    finally:
        conn.close()


@pytest.mark.slow
def test_frames_are_encoded_only_while_someone_watches_and_at_a_capped_rate(server, controller):
    tap = controller.tap
    time.sleep(0.3)
    assert tap.seq > 10 and tap.encoded == 0  # frames flow, nobody watches: nothing encoded
    parts, elapsed = count_parts(server, "/stream.mjpg")
    # encoded for the watcher, not for every frame written (the feeder writes 100 per second)
    assert parts <= tap.encoded <= parts + 3
    # the feeder writes 100 frames/s; the client gets at most the preview's cap (slowness only lowers it)
    assert parts <= PREVIEW_FPS * elapsed + 2


@pytest.mark.slow
def test_stream_rate_can_be_asked_for_within_limits(server):
    parts, elapsed = count_parts(server, "/stream.mjpg?fps=3")
    assert parts <= 3 * elapsed + 2
    parts, elapsed = count_parts(server, "/stream.mjpg?fps=1000")  # kept to the maximum
    assert parts <= MAX_STREAM_FPS * elapsed + 2
    for bad in ("0", "-1", "fast", "nan", "inf", "1e999"):
        status, _, body = call(server, "GET", f"/stream.mjpg?fps={bad}", headers=auth())
        assert status == 400 and "expected a positive number" in json.loads(body)["error"], bad


def test_stream_ends_when_the_output_closes(server, controller):
    conn, resp = open_stream(server, headers=auth())
    try:
        read_part(resp)
        controller.tap.close()  # as the sink worker does at the end of the run
        deadline = time.monotonic() + 5
        while resp.fp.read(65536) and time.monotonic() < deadline:
            pass
        assert resp.fp.read(1) == b""  # the server ended the response
    finally:
        conn.close()


def test_no_preview_output_is_503(server, controller):
    controller.outputs.clear()
    status, _, body = call(server, "GET", "/stream.mjpg", headers=auth())
    assert status == 503 and "no live preview" in json.loads(body)["error"]


def test_upload_sets_the_background_and_keeps_only_the_latest_file(server, controller):
    status, _, body = call(server, "POST", "/background/image", png_bytes(), auth(**{"Content-Type": "image/png"}))
    assert status == 200, body
    first = json.loads(body)["bg"]
    assert controller.backgrounds == [first] and first.endswith(".png")
    jpeg = png_bytes(colour=(255, 0, 0), fmt="JPEG")
    status, _, body = call(server, "POST", "/background/image", jpeg, auth(**{"Content-Type": "image/jpeg"}))
    assert status == 200, body
    second = json.loads(body)["bg"]
    assert second.endswith(".jpg") and controller.backgrounds == [first, second]
    with pytest.raises(FileNotFoundError):
        open(first, "rb")  # the older upload was already decoded by the pipeline and is gone
    assert cv2.imread(second) is not None


def test_upload_needs_the_bearer_header(server, controller):
    png = png_bytes()
    assert call(server, "POST", "/background/image", png, {"Content-Type": "image/png"})[0] == 401
    status = call(server, "POST", f"/background/image?token={TOKEN}", png, {"Content-Type": "image/png"})[0]
    assert status == 401  # the query token is only for what cannot send headers (<img>, OBS, VLC)
    assert controller.backgrounds == []


@pytest.mark.parametrize(("ctype", "body", "status", "fragment"), [
    ("text/plain", b"hello", 415, "expected one of image/png"),
    ("", png_bytes(), 415, "'none'"),
    ("image/png", png_bytes(fmt="JPEG"), 415, "JPEG data, not the declared PNG"),
    ("image/jpeg", b"\xff\xd8\xff\xe0 not really a jpeg", 415, "not a readable JPEG"),
    ("image/png", png_bytes()[:60], 415, "not a readable PNG"),
    ("image/png", b"", 400, "empty upload"),
    ("image/png", png_header_only(8000, 6000), 413, f"{MAX_PIXELS}-pixel limit"),
    ("image/png", b"\0" * (MAX_UPLOAD + 1), 413, f"{MAX_UPLOAD}-byte limit"),
])
def test_upload_type_and_size_limits(server, controller, ctype, body, status, fragment):
    headers = auth(**({"Content-Type": ctype} if ctype else {}))
    got, _, answer = call(server, "POST", "/background/image", body, headers)
    assert got == status
    assert fragment in json.loads(answer)["error"]
    assert controller.backgrounds == []
    assert call(server, "GET", "/health", headers=auth())[0] == 200  # still serving


def test_preview_sink_is_registered_and_never_paced():
    tap = create_sink("preview", None)
    assert isinstance(tap, MjpegTap) and tap.live is False and tap.accepts_alpha


def test_transparent_output_is_previewed_over_a_checkerboard():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent: only the checkerboard shows
    image = cv2.imdecode(np.frombuffer(encode_jpeg(rgba, 95), np.uint8), cv2.IMREAD_GRAYSCALE).astype(int)
    assert abs(image[4, 4] - 204) < 8 and abs(image[4, 20] - 153) < 8
    opaque = rgba.copy()
    opaque[..., 3] = 255
    bgr = cv2.imdecode(np.frombuffer(encode_jpeg(opaque, 95), np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert bgr[32, 32, 2] > 240 and bgr[32, 32, 1] < 15
    with pytest.raises(ValueError, match="H x W x 3/4 uint8"):
        encode_jpeg(np.zeros((4, 4), np.uint8))


def test_uploads_are_removed_when_the_server_closes(controller, start_control):
    server = start_control(controller, TOKEN)
    status, _, body = call(server, "POST", "/background/image", png_bytes(), auth(**{"Content-Type": "image/png"}))
    assert status == 200, body
    folder = Path(json.loads(body)["bg"]).parent
    assert folder.name.startswith("rvm-live-upload-") and folder.is_dir()
    assert oct(folder.stat().st_mode & 0o777) == "0o700"  # private to the user
    server.close()
    assert not folder.exists()


def test_a_failed_upload_leaves_nothing(controller, server, monkeypatch):
    before = set(Path(tempfile.gettempdir()).glob("rvm-live-upload-*"))

    def refuse(spec, stream=None):
        raise OSError("the pipeline cannot use it")

    monkeypatch.setattr(controller, "set_background", refuse)
    status, _, body = call(server, "POST", "/background/image", png_bytes(), auth(**{"Content-Type": "image/png"}))
    assert status == 422 and json.loads(body) == {"error": "the pipeline cannot use it"}
    assert set(Path(tempfile.gettempdir()).glob("rvm-live-upload-*")) == before
