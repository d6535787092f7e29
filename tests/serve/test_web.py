"""The web page end to end: the real daemon on a looping file with ``--control`` and a token, its
``/stream.mjpg`` read by FFmpeg (PyAV), and the page driven in real headless Chromium (Playwright).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); the browser tests skip without it.
``RVM_LIVE_DOCS_SCREENSHOT=1`` also writes the page's screenshot to ``docs/web-ui.png`` for the README.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers import DaemonProcess, chromium
from PIL import Image

TOKEN = "web-e2e-token"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-ui.png"
BLUE, BLUE_HEX = (42, 111, 219), "#2a6fdb"


@pytest.fixture(scope="module")
def daemon(carphone_path, official_onnx_path, tmp_path_factory):
    """The daemon on the looping clip with the control API (and so the page) on a free port, behind a token."""
    log_path = tmp_path_factory.mktemp("web") / "daemon.log"
    with DaemonProcess("--source", str(carphone_path), "--loop", "--realtime", "-o", "null", token=TOKEN,
                       log_path=log_path) as d:
        d.wait_stats(lambda s: s["frames_out"] > 0, within=120)
        yield d
        code = d.stop(timeout=15)
    assert code == 0, d.log()  # SIGTERM with page clients attached still stops cleanly


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, daemon):
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def grab_frames(url: str, count: int, fmt: str | None = "mpjpeg") -> list[np.ndarray]:
    """``count`` decoded frames of an MJPEG-over-HTTP stream, through FFmpeg's own HTTP client."""
    frames = []
    with av.open(url, format=fmt, timeout=30) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= count:
                break
    return frames


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - rgb) <= tol, axis=-1)


def not_blank(png: bytes) -> np.ndarray:
    """Decode a screenshot and check it shows something: many distinct colours, real contrast."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.std() > 20
    assert len(np.unique(image.reshape(-1, 3) // 16, axis=0)) > 50
    return image[..., ::-1]  # RGB


def test_ffmpeg_reads_frames_from_stream_mjpg(daemon):
    frames = grab_frames(f"{daemon.url}/stream.mjpg?token={TOKEN}", 3)
    assert len(frames) == 3 and all(f.shape == (144, 176, 3) for f in frames)
    probed = grab_frames(f"{daemon.url}/stream.mjpg?token={TOKEN}", 1, fmt=None)  # as players open it
    assert probed[0].shape == (144, 176, 3)
    with pytest.raises(av.FFmpegError):
        grab_frames(f"{daemon.url}/stream.mjpg?token=wrong", 1)  # 401


@pytest.mark.slow
def test_page_shows_the_preview_and_stats_and_a_colour_click_changes_the_background(page, daemon):
    page.goto(f"{daemon.url}/#token={TOKEN}")
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    assert page.url == f"{daemon.url}/"  # the token left the address bar
    page.wait_for_function("/^[0-9.]+$/.test(document.getElementById('fps-out').textContent)")

    page.locator("#color").fill(BLUE_HEX)  # what picking a colour in the dialog does
    daemon.wait_stats(lambda s: s["background"] == BLUE_HEX)
    page.wait_for_function(f"document.getElementById('setting-background').textContent === '{BLUE_HEX}'")

    # the preview <img> shows new frames, with the new background (the clip's top-left corner is background)
    deadline = time.monotonic() + 60
    while not near(grab_frames(f"{daemon.url}/stream.mjpg?token={TOKEN}", 1)[0][:12, :12], BLUE).all():
        assert time.monotonic() < deadline, "the stream never showed the new background"
    page.wait_for_function("samples.length >= 5")  # the stats chart has a few seconds of history
    time.sleep(1.0)  # the <img> has had time to show a frame with the new background
    preview = not_blank(page.locator("#preview").screenshot())
    assert near(preview, BLUE).mean() > 0.2, "the preview <img> does not show the blue background"
    shot = page.screenshot()
    not_blank(shot)
    if os.environ.get("RVM_LIVE_DOCS_SCREENSHOT"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        # a 128-colour palette keeps the committed PNG small and the page legible
        Image.open(io.BytesIO(shot)).convert("RGB").quantize(128).save(DOCS_SCREENSHOT, optimize=True)


def test_upload_an_image_from_the_page(page, daemon, tmp_path):
    gradient = np.zeros((90, 160, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 160, dtype=np.uint8)
    gradient[..., 2] = 200
    path = tmp_path / "beach.png"
    Image.fromarray(gradient).save(path)
    page.goto(f"{daemon.url}/#token={TOKEN}")
    page.set_input_files("#upload", str(path))
    stats = daemon.wait_stats(lambda s: str(s["background"]).endswith(".png"))
    assert "rvm-live-upload" in stats["background"]
    page.wait_for_function("document.getElementById('message').textContent === 'background: beach.png'")

    # a file of the wrong type is refused by the page, and the daemon's background stays as it was
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.set_input_files("#upload", str(text))
    page.wait_for_function("document.getElementById('message').textContent.includes('is not PNG, JPEG or WebP')")
    assert daemon.get("/stats")["background"] == stats["background"]


def test_pause_resume_and_reset_buttons(page, daemon):
    page.goto(f"{daemon.url}/#token={TOKEN}")
    page.click("#pause")
    daemon.wait_stats(lambda s: s["paused"] is True)
    page.wait_for_function("document.getElementById('state').textContent === 'paused'")
    page.click("#resume")
    daemon.wait_stats(lambda s: s["paused"] is False)
    page.click("#reset")
    page.wait_for_function("document.getElementById('message').textContent === 'reset'")


def test_page_without_the_token_asks_for_it(page, daemon):
    page.goto(daemon.url + "/")
    page.wait_for_selector("#token-form", state="visible")  # /stats answered 401
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 0
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    page.wait_for_function("document.getElementById('state').textContent === 'running'")
