"""The control API against other web pages, in real headless Chromium (Debian's ``chromium``, Playwright):
a page on another origin tries a CSRF "simple request" and embeds the camera's preview, a DNS-rebinding page
tries to read /stats under its own name, and all fail, while the page served by the API still works.

The server has no token (the default on 127.0.0.1), which is when these attacks mattered. The controller is a
small in-test one with a real preview tap fed by a thread.
"""

from __future__ import annotations

import http.server
import threading

import cv2
import numpy as np
import pytest
from helpers import Feeder, TapController, chromium
from media import free_port
from PIL import Image

pytestmark = pytest.mark.slow

REBIND_HOST = "rebind.test"  # Chromium resolves it to 127.0.0.1 (--host-resolver-rules), as a rebound name would
# Chromium's own guard for private addresses (Private/Local Network Access) is off: the server must refuse
# on its own, as it must for the browsers without that guard
NO_BROWSER_GUARD = ("--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
                    "PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks")


@pytest.fixture(scope="module")
def browser():
    with chromium(NO_BROWSER_GUARD, f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1") as browser:
        yield browser


@pytest.fixture
def feed_fps():
    return 30.0


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


class AttackerSite:
    """Another origin on this machine (127.0.0.2, its own port) serving one HTML page."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.2", free_port()), Handler)
        self.url = f"http://127.0.0.2:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def attack_page(api: str) -> str:
    # what any web page can do without asking: a no-cors "simple request" (text/plain), an auto-submitted
    # form, and an <img> of the camera's preview
    return f"""<!doctype html><body>
<form id="f" method="POST" action="{api}/pause" enctype="text/plain"><input name='{{"a":"' value='"}}'></form>
<iframe name="sink" style="display:none"></iframe>
<img id="cam" src="{api}/stream.mjpg">
<script>
window.sent = fetch("{api}/pause", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                     body: "{{}}"}}).then(() => "sent", (e) => "failed: " + e);
window.bg = fetch("{api}/background", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                     body: JSON.stringify({{bg: "red"}})}}).then(() => "sent", (e) => "failed");
const cam = document.getElementById("cam");
window.camera = new Promise((ok) => {{ cam.onload = () => ok("loaded"); cam.onerror = () => ok("refused"); }});
document.getElementById("f").target = "sink";
document.getElementById("f").submit();
</script></body>"""


def test_another_origin_can_neither_pause_nor_watch(page, server, controller):
    api = f"http://127.0.0.1:{server.address[1]}"
    site = AttackerSite(attack_page(api))
    try:
        page.goto(site.url)
        assert page.evaluate("window.sent") == "sent"  # the browser sent it (no-cors hides the answer)
        page.evaluate("window.bg")
        camera = page.evaluate("window.camera")
        page.wait_for_timeout(1000)  # the form's navigation in the hidden frame has been answered too
    finally:
        site.close()
    assert controller.calls == [] and controller.paused is False and controller.background == "green"
    assert camera == "refused"


def test_a_rebound_name_reads_nothing(page, server):
    port = server.address[1]
    rebound = f"http://{REBIND_HOST}:{port}"
    # the attacker's page, as its own server gave it before the name was rebound to 127.0.0.1
    page.route(rebound + "/", lambda route: route.fulfill(status=200, content_type="text/html",
                                                           body="<!doctype html><title>attack</title>"))
    page.goto(rebound + "/")
    # same origin now, so the browser lets the page read whatever answers: the API must not answer
    answer = page.evaluate("""async () => {
        const res = await fetch('/stats');
        return [res.status, await res.text()];
    }""")
    assert answer[0] == 403 and "frames_out" not in answer[1] and REBIND_HOST in answer[1]
    camera = page.evaluate("""() => new Promise((ok) => {
        const img = new Image();
        img.onload = () => ok('loaded'); img.onerror = () => ok('refused');
        img.src = '/stream.mjpg';
    })""")
    assert camera == "refused"


def test_the_real_page_still_works(page, server, controller):
    page.goto(f"http://127.0.0.1:{server.address[1]}/")
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    page.wait_for_function("document.getElementById('state').textContent === 'running'")
    # the swatch shows the colour the daemon uses for "green", the green of a green screen
    assert page.locator("#color").input_value() == "#00ff00"
    page.click("#pause")
    page.wait_for_function("document.getElementById('message').textContent === 'pause'")
    assert controller.calls == ["pause"]
    page.locator("#color").fill("#2a6fdb")
    page.wait_for_function("document.getElementById('setting-background').textContent === '#2a6fdb'")
    assert controller.background == "#2a6fdb"


def test_the_page_names_the_engine_and_an_upload_not_its_path(page, server, controller, monkeypatch, tmp_path):
    stats = controller.stats
    monkeypatch.setattr(controller, "stats", lambda stream=None: {**stats(stream), "engine": "onnxruntime"})
    page.goto(f"http://127.0.0.1:{server.address[1]}/")
    page.wait_for_function("document.getElementById('setting-engine')?.textContent === 'onnxruntime'")
    picture = tmp_path / "beach.png"
    Image.new("RGB", (64, 48), (0, 0, 255)).save(picture)
    page.set_input_files("#upload", str(picture))
    page.wait_for_function("document.getElementById('setting-background')?.textContent === "
                           "'uploaded image (beach.png)'")
    assert "/tmp" not in page.locator("#settings").inner_text() and "rvm-live-upload" in controller.background


class TwoStreams:
    """Streams "left" and "right", each with its own preview tap (fed grey and white) and settings."""

    def __init__(self) -> None:
        self.one = {"left": TapController(), "right": TapController()}
        for stream_id, c in self.one.items():
            c.stream_id = stream_id

    def _pick(self, stream):
        if stream is None:
            raise ValueError("several streams run (left, right): name one")
        return self.one[stream]

    def session(self, stream=None):
        return self._pick(stream).session(stream)

    @property
    def sinks(self):
        return [c.tap for c in self.one.values()]

    def streams(self):
        return [{"id": k, **c.health()} for k, c in self.one.items()]

    def health(self, stream=None):
        return self._pick(stream).health() if stream else {"ok": True, "streams": self.streams()}

    def stats(self, stream=None):
        return self._pick(stream).stats() if stream else {"streams": {k: c.stats() for k, c in self.one.items()}}

    def set_background(self, spec, stream=None):
        self._pick(stream).set_background(spec)

    def pause(self, stream=None):
        for c in [self._pick(stream)] if stream else self.one.values():
            c.pause()

    def resume(self, stream=None):
        for c in [self._pick(stream)] if stream else self.one.values():
            c.resume()

    def reset(self, stream=None):
        for c in [self._pick(stream)] if stream else self.one.values():
            c.reset()


def test_with_several_streams_the_page_picks_one(page, start_control):
    two = TwoStreams()
    server = start_control(two)
    grey, white = Feeder(two.one["left"].tap, fps=30), Feeder(two.one["right"].tap, fps=30, noise=True)
    with grey, white:
        page.goto(f"http://127.0.0.1:{server.address[1]}/")
        page.wait_for_selector("#stream-picker", state="visible")
        assert page.locator("#stream option").all_inner_texts() == ["left", "right"]
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        page.select_option("#stream", "right")
        page.wait_for_function("document.getElementById('stream-url').textContent.includes('stream=right')")
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        page.wait_for_timeout(1000)
        preview = cv2.imdecode(np.frombuffer(page.locator("#preview").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        assert preview.std() > 40  # the noise of "right", not the flat grey of "left"
        page.click("#pause")
        page.wait_for_function("document.getElementById('message').textContent === 'pause'")
        page.locator("#color").fill("#2a6fdb")
        page.wait_for_function("document.getElementById('setting-background').textContent === '#2a6fdb'")
    two.one["left"].tap.close()
    two.one["right"].tap.close()
    assert two.one["right"].calls == ["pause", "bg:#2a6fdb"] and two.one["left"].calls == []
