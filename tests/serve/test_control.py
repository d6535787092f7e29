"""The control API over real HTTP on loopback, driving a small in-test controller."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse

import cv2
import numpy as np
import pytest
from helpers import FakeController, request

from rvm_live.errors import ConfigError
from rvm_live.serve.control import TOKEN_ENV, ControlServer, is_loopback, parse_address
from rvm_live.serve.http import MAX_BODY


@pytest.fixture
def controller():
    return FakeController()


@pytest.fixture
def server(controller, start_control):
    return start_control(controller)


def test_health_and_stats(server):
    assert request(server, "GET", "/health")[:2] == (200, {"ok": True, "paused": False})
    status, stats, headers = request(server, "GET", "/stats")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert stats["frames_out"] == 117 and stats["latency_ms"]["p95"] == 55.0


def test_metrics_reads_stats_at_scrape_time(server, controller):
    status, text, headers = request(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = set(text.splitlines())
    for line in (
        'rvm_live_frames_in_total{stream="0"} 120.0',  # every series carries the stream it counts
        'rvm_live_frames_out_total{stream="0"} 117.0',
        'rvm_live_frames_dropped_total{stream="0"} 3.0',
        'rvm_live_fps_out{stream="0"} 29.5',
        'rvm_live_downsample_ratio{stream="0"} 0.25',
        'rvm_live_latency_seconds{quantile="0.95",stream="0"} 0.055',
        'rvm_live_latency_seconds{quantile="1",stream="0"} 0.08',
        'rvm_live_model_info{backbone="mobilenetv3",device="cpu"} 1.0',
        'rvm_live_paused{stream="0"} 0.0',
    ):
        assert line in lines, (line, text)
    assert "python_gc" not in text  # its own registry, not the process-global one
    controller.paused = True
    assert 'rvm_live_paused{stream="0"} 1.0' in request(server, "GET", "/metrics")[1].splitlines()


def test_pause_resume_reset(server, controller):
    for action in ("pause", "resume", "reset"):
        assert request(server, "POST", f"/{action}")[:2] == (200, {"ok": True})
    assert controller.calls == ["pause", "resume", "reset"]


def test_set_background_colour_and_file(server, controller, tmp_path):
    assert request(server, "POST", "/background", {"bg": "lime"})[:2] == (200, {"ok": True, "bg": "lime"})
    image = tmp_path / "bg.png"
    cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    assert request(server, "POST", "/background", {"bg": str(image)})[0] == 200
    assert controller.calls == ["bg:lime", f"bg:{image}"]


def test_missing_file_is_refused_before_the_controller_sees_it(server, controller, tmp_path):
    missing = str(tmp_path / "nowhere.mp4")
    status, body, _ = request(server, "POST", "/background", {"bg": missing})
    assert 400 <= status < 500 and missing in body["error"]
    assert controller.calls == []


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"{not json", "not valid JSON"), (b'{"background": "red"}', '"bg"'), (b'["red"]', '"bg"'),
     (b'{"bg": 3}', '"bg"'), (b"\xff\xfe", "not valid JSON")],
)
def test_bad_background_bodies_are_400(server, controller, raw, fragment):
    status, body, _ = request(server, "POST", "/background", raw=raw)
    assert status == 400 and fragment in body["error"]
    assert controller.calls == []


def test_bad_spec_is_400_naming_it(server):
    status, body, _ = request(server, "POST", "/background", {"bg": "plaid"})
    assert status == 400 and "plaid" in body["error"]


def test_oversized_body_is_413(server, controller):
    raw = json.dumps({"bg": "red", "pad": "x" * MAX_BODY}).encode()
    status, body, _ = request(server, "POST", "/background", raw=raw)
    assert status == 413 and "limit" in body["error"]
    assert controller.calls == []


def test_controller_errors_become_4xx_or_500_and_the_server_keeps_serving(server, controller):
    controller.fail_with = ValueError("unsupported size")
    assert request(server, "POST", "/background", {"bg": "red"})[:2] == (400, {"error": "unsupported size"})
    controller.fail_with = OSError("device went away")
    assert request(server, "POST", "/background", {"bg": "red"})[:2] == (422, {"error": "device went away"})
    controller.fail_with = RuntimeError("boom")
    status, body, _ = request(server, "POST", "/background", {"bg": "red"})
    assert status == 500 and "boom" in body["error"]
    assert request(server, "GET", "/health")[0] == 200
    assert request(server, "POST", "/background", {"bg": "red"})[0] == 200


def test_unknown_path_404_and_wrong_method_405(server):
    status, body, _ = request(server, "GET", "/nope")
    assert status == 404 and "/nope" in body["error"]
    status, body, headers = request(server, "GET", "/pause")
    assert status == 405 and "error" in body and headers["Allow"] == "POST"
    status, body, headers = request(server, "POST", "/stats")
    assert status == 405 and headers["Allow"] == "GET"
    assert request(server, "DELETE", "/background")[0] == 405
    status, body, _ = request(server, "BREW", "/health")
    assert status == 501 and "error" in body  # http.server's own errors are JSON too
    assert request(server, "GET", "/health/?x=1")[0] == 200


def test_non_loopback_bind_needs_a_token(controller, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match="0.0.0.0"):
        ControlServer(controller, "0.0.0.0", 0)
    srv = ControlServer(controller, "0.0.0.0", 0, token="s3cret")
    srv.close()
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    srv = ControlServer(controller, "0.0.0.0", 0)
    assert srv.token == "from-env"
    srv.close()


def test_token_is_required_on_every_request(controller, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with ControlServer(controller, "127.0.0.1", 0, token="s3cret") as srv:
        for token in (None, "wrong", "s3cre", "s3cret2"):
            status, body, headers = request(srv, "GET", "/stats", token=token)
            assert status == 401 and "token" in body["error"] and headers["WWW-Authenticate"] == "Bearer"
        assert request(srv, "POST", "/pause", token="wrong")[0] == 401
        assert request(srv, "GET", "/nope")[0] == 401  # nothing is revealed without the token
        assert controller.calls == []
        assert request(srv, "GET", "/stats", token="s3cret")[0] == 200
        assert request(srv, "POST", "/pause", token="s3cret")[0] == 200
        assert controller.calls == ["pause"]


def test_close_is_idempotent_and_frees_the_port(controller):
    srv = ControlServer(controller).start()
    host, port = srv.address
    assert host == "127.0.0.1" and port > 0
    srv.close()
    srv.close()
    ControlServer(controller, host, port).close()  # the port can be bound again
    ControlServer(controller).close()  # closing a never-started server does not hang


def test_serving_thread_is_named_and_daemon(server):
    thread = next(t for t in threading.enumerate() if t.name == "rvm-control")
    assert thread.daemon


def test_address_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com") and not is_loopback("")
    assert parse_address("8765") == ("127.0.0.1", 8765)
    assert parse_address(":8765") == ("127.0.0.1", 8765)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("host:", "host:99999", "a:b:c", ""):
        with pytest.raises(ConfigError, match="control address"):
            parse_address(bad)


def test_metrics_speak_plain_words_and_count_outages(server, controller, monkeypatch):
    monkeypatch.setattr(controller, "stats", lambda stream=None: {
        **FakeController.stats(controller), "source_outages": 2, "source_outage_s": 1.5, "quality_changes": 1,
        "engine": "onnxruntime"})
    text = request(server, "GET", "/metrics")[1]
    lines = set(text.splitlines())
    assert 'rvm_live_model_info{backbone="mobilenetv3",device="cpu",engine="onnxruntime"} 1.0' in lines
    assert "# TYPE rvm_live_source_outages_total counter" in lines
    assert 'rvm_live_source_outages_total{stream="0"} 2.0' in lines
    assert 'rvm_live_source_outage_seconds_total{stream="0"} 1.5' in lines
    assert "# HELP rvm_live_fps_out Output frames per second, over the run" in lines
    helps = [line for line in lines if line.startswith("# HELP")]
    assert helps and not [h for h in helps if "stats[" in h or "'" in h]


def test_metrics_without_an_engine_still_name_the_model(server):
    assert 'rvm_live_model_info{backbone="mobilenetv3",device="cpu"} 1.0' in request(server, "GET", "/metrics")[1]


def test_stats_say_which_colour_a_named_background_is(server, controller):
    assert request(server, "GET", "/stats")[1]["background_color"] == "#00ff00"  # a green screen's green
    request(server, "POST", "/background", {"bg": "#123"})
    assert request(server, "GET", "/stats")[1]["background_color"] == "#112233"
    request(server, "POST", "/background", {"bg": "blur:8"})
    assert "background_color" not in request(server, "GET", "/stats")[1]


class CafeController(FakeController):
    stream_id = "café ☕"


def test_a_non_ascii_stream_id_is_reachable_by_its_url(start_control):
    controller = CafeController()
    server = start_control(controller)
    quoted = urllib.parse.quote("café ☕")
    assert request(server, "GET", "/streams")[1]["streams"][0]["id"] == "café ☕"
    assert request(server, "GET", f"/streams/{quoted}/stats")[0] == 200
    assert request(server, "POST", f"/streams/{quoted}/pause")[:2] == (200, {"ok": True})
    assert controller.calls == ["pause"]
    assert request(server, "GET", "/streams/caf%E9/stats")[0] == 404  # Latin-1, not UTF-8: another id


def test_error_answers_do_not_show_where_we_are_installed(server):
    for path in ("/static/" + "a" * 300, "/static/" + "%2e" * 200, "/static/x%00y"):
        status, body, _ = request(server, "GET", path)
        assert status == 404 and "rvm_live" not in json.dumps(body) and "/" not in body["error"], path


def test_a_port_in_use_is_one_clear_error(controller):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"control API: cannot listen on 127.0.0.1:{port}: address already "
                                              "in use .*another rvm-live"):
            ControlServer(controller, "127.0.0.1", port)
