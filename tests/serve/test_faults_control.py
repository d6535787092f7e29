"""Control API hardening: nesting and size limits, resets, slow bodies, a bounded pool, UTF-8 tokens."""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import DaemonProcess, FakeController, corrupt_clip, read_all, request, write_clip
from PIL import Image

from rvm_live.serve.control import ControlServer
from rvm_live.serve.http import MAX_JSON_DEPTH


@pytest.fixture
def controller():
    return FakeController()


DEADLINE_S = 2.0  # the request deadline of these tests' server (shorter than the default, to keep them quick)


@pytest.fixture
def server(controller, start_control):
    return start_control(controller, request_deadline_s=DEADLINE_S)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"bg": ' + b"[" * 40 + b'"red"' + b"]" * 40 + b"}",
                                 b'{"bg": "red", "x": ' + b'{"a": ' * 30 + b"1" + b"}" * 30 + b"}"])
def test_deep_json_is_400_not_500(server, controller, raw, caplog):
    status, body, _ = request(server, "POST", "/background", raw=raw[:60_000])
    assert status == 400 and "error" in body
    assert controller.calls == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_shallow_json_with_brackets_in_strings_is_fine(server, controller):
    spec = "[" * (MAX_JSON_DEPTH + 5)
    status, body, _ = request(server, "POST", "/background", raw=json.dumps({"bg": spec}).encode())
    assert status == 400 and "background" in body["error"]  # refused as a spec, not for its nesting


def test_connection_resets_are_debug_only(server, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="rvm_live.serve.control")
    host, port = server.address
    for _ in range(50):
        s = socket.create_connection((host, port))
        s.sendall(b"POST /background HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
        s.close()
    deadline = time.monotonic() + 20
    while request(server, "GET", "/health")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name == "rvm_live.serve.control"]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
def test_a_short_body_is_cut_off(server, controller):
    host, port = server.address
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /background HTTP/1.0\r\nContent-Length: 100\r\n\r\n{\"bg\": ")
        answer = read_all(s)
    assert answer.startswith("HTTP/1.0 408") and f"not received within {DEADLINE_S:g} s" in answer
    assert controller.calls == []


@pytest.mark.slow
def test_a_flood_of_silent_connections_costs_no_worker(server):
    host, port = server.address
    before = threading.active_count()
    idle = [socket.create_connection((host, port)) for _ in range(200)]  # connect, say nothing
    try:
        assert threading.active_count() <= before  # the pool's threads existed before the flood
        # the workers are free: the API answers while 200 connections hang, not after they time out
        assert request(server, "GET", "/health")[0] == 200
        for s in idle:
            s.settimeout(30)
        answers = [read_all(s) for s in idle]  # each is cut off at the request's deadline
    finally:
        for s in idle:
            s.close()
    assert all(a.startswith("HTTP/1.0 408") and "not received within" in a for a in answers)
    assert request(server, "GET", "/health")[0] == 200


def test_a_utf8_token_matches_what_clients_send(controller):
    token = "pässwörd-✓"
    with ControlServer(controller, "127.0.0.1", 0, token=token) as srv:
        def status(header: bytes, method: str = "GET", path: str = "/health") -> int:
            conn = http.client.HTTPConnection(*srv.address, timeout=10)
            conn.putrequest(method, path)
            conn.putheader("Authorization", header)
            conn.putheader("Content-Length", "0")
            conn.endheaders()
            code = conn.getresponse().status
            conn.close()
            return code

        assert status(b"Bearer " + token.encode("utf-8")) == 200
        assert status(b"Bearer " + token.encode("latin-1", "replace")) == 401
        assert status(b"Bearer wrong") == 401
        # the web page's routes take the same token the same way: the upload gets past the token check (its
        # empty body is then refused as such), and so would the preview
        assert status(b"Bearer " + token.encode("utf-8"), "POST", "/background/image") not in (401, 200)
        assert status(b"Bearer wrong", "POST", "/background/image") == 401


def test_every_unusable_path_gets_the_same_answer(server, controller, tmp_path):
    answers = set()
    for path in (tmp_path / "missing.png", tmp_path, tmp_path / "sub" / "x.mp4"):
        status, body, _ = request(server, "POST", "/background", {"bg": str(path)})
        assert status == 422
        answers.add(body["error"].replace(str(path), "PATH"))
    assert answers == {"background 'PATH': not a usable image or video file"}


@pytest.mark.slow
def test_token_file_and_background_checks_on_a_live_daemon(tmp_path, carphone_path, official_onnx_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    bad = tmp_path / "head-only.mp4"
    bad.write_bytes(open(write_clip(tmp_path / "good.mp4"), "rb").read()[:1200])
    corrupt = corrupt_clip(tmp_path / "corrupt.mp4")
    with DaemonProcess("--source", str(carphone_path), "--realtime", "--loop", "-o", "null",
                "--control-token-file", str(token_file)) as daemon:
        def call(method, path, body=None, token="s3cret"):
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            result = response.status, json.loads(response.read())
            conn.close()
            return result

        assert call("GET", "/health", token=None)[0] == 401
        assert "s3cret" not in open(f"/proc/{daemon.proc.pid}/cmdline", "rb").read().decode(errors="replace")
        # decoded before the answer: refused, with the same words as a missing file
        assert call("POST", "/background", {"bg": str(bad)}) == (
            422, {"error": f"background {str(bad)!r}: not a usable image or video file"})
        assert call("POST", "/background", {"bg": corrupt})[0] == 200  # decodes at first: accepted
        deadline = time.monotonic() + 60
        while not call("GET", "/health")[1].get("background_error") and time.monotonic() < deadline:
            time.sleep(0.2)
        health = call("GET", "/health")[1]
        assert health["ok"] and "corrupt.mp4" in health["background_error"]
        before = call("GET", "/stats")[1]["frames_out"]
        time.sleep(1.0)
        assert call("GET", "/stats")[1]["frames_out"] > before  # still matting, on the fallback
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr


@pytest.mark.slow
def test_a_control_port_in_use_fails_before_the_model_loads(carphone_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "rvm_live", "--source", str(carphone_path), "-o", "null",
                               "--log-level", "info", "--control", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [f"rvm-live: error: control API: cannot listen on 127.0.0.1:{port}: "
                                        "address already in use (is another rvm-live running? pick another port "
                                        "with --control)"]  # one line, and no "inference: ..." (no model loaded)


@pytest.mark.slow
def test_uploads_are_gone_after_exit_the_address_is_logged_once_and_allowed_hosts_answer(tmp_path, carphone_path):
    png = io.BytesIO()
    Image.new("RGB", (32, 24), (0, 0, 255)).save(png, format="PNG")
    with DaemonProcess("--source", str(carphone_path), "--realtime", "--loop", "-o", "null",
                "--control-allow-host", "studio.lan") as daemon:
        daemon.wait_stats(lambda s: s.get("frames_out", 0) > 0)  # up and healthy: /health answers 200, not 503
        for host, status in (("studio.lan", 200), ("evil.example", 403)):
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
            conn.request("GET", "/health", headers={"Host": f"{host}:{daemon.port}"})
            assert conn.getresponse().status == status, host
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        conn.request("POST", "/background/image", png.getvalue(), {"Content-Type": "image/png"})
        response = conn.getresponse()
        uploaded = Path(json.loads(response.read())["bg"])
        conn.close()
        assert response.status == 200 and uploaded.is_file()
        assert daemon.stop() == 0
    assert not uploaded.parent.exists()  # the CLI leaves with os._exit, which skips TemporaryDirectory's clean-up
    assert daemon.stderr.count("control API on") == 1
