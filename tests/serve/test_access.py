"""Who may call the control API: no other web page (Origin, Sec-Fetch-Site, JSON-only state changes), no
DNS-rebinding name (Host), and tokens as players send them. Plain HTTP on loopback, rule by rule."""

from __future__ import annotations

import http.client
import json
import logging

import pytest
from helpers import Feeder

from rvm_live.serve.http import AccessPolicy

TOKEN = "a+b/c=d"  # a "+" as base64 tokens have; a player sends it as typed


def call(server, method, path, headers=None, body=None):
    """(status, JSON body) with exactly the headers given (http.client adds Host unless one is given)."""
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        if resp.headers.get("Content-Type", "").startswith("multipart/"):
            return resp.status, {}  # the preview: it streams until we hang up
        data = resp.read()
        return resp.status, json.loads(data) if resp.headers["Content-Type"] == "application/json" else data
    finally:
        conn.close()


def origin(server, host="127.0.0.1"):
    return f"http://{host}:{server.address[1]}"


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("foreign", ["http://evil.example", "http://127.0.0.1:1", "null", "http://localhost"])
def test_a_foreign_origin_cannot_change_anything(server, controller, foreign):
    for path, body in (("/pause", b"{}"), ("/background", b'{"bg": "red"}'), ("/reset", b"")):
        status, answer = call(server, "POST", path, {"Origin": foreign, **JSON}, body)
        assert status == 403 and "cross-origin" in answer["error"], path
    assert call(server, "GET", "/stats", {"Origin": foreign})[0] == 403  # nor read
    assert controller.calls == []


def test_the_pages_own_origin_is_fine(server, controller):
    for host in ("127.0.0.1", "localhost"):
        headers = {"Host": f"{host}:{server.address[1]}", "Origin": origin(server, host), **JSON}
        assert call(server, "POST", "/pause", headers, b"{}")[0] == 200
    assert controller.calls == ["pause", "pause"]


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_state_changes_need_a_json_content_type(server, controller, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    for path, body in (("/pause", b""), ("/background", b'{"bg": "red"}'), ("/streams/0/resume", b"{}")):
        status, answer = call(server, "POST", path, headers, body)
        assert status == 415 and "application/json" in answer["error"], path
    assert controller.calls == []
    assert call(server, "POST", "/pause", {"Content-Type": "application/json; charset=utf-8"})[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_a_foreign_host_name_reads_nothing(server, controller, host):
    for path in ("/stats", "/health", "/metrics", "/stream.mjpg", "/", "/static/app.js"):
        status, answer = call(server, "GET", path, {"Host": host})
        assert status == 403 and "Host" in answer["error"], path
    assert call(server, "POST", "/pause", {"Host": host, **JSON})[0] == 403
    assert controller.calls == []


def test_loopback_and_allowed_host_names_are_answered(server, controller, start_control):
    port = server.address[1]
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "[::1]:80", "127.0.0.2"):
        assert call(server, "GET", "/stats", {"Host": host})[0] == 200, host
    other = start_control(controller, allow_hosts=["studio.lan"])
    assert call(other, "GET", "/stats", {"Host": f"studio.lan:{other.address[1]}"})[0] == 200
    assert call(other, "GET", "/stats", {"Host": "evil.example"})[0] == 403


def test_host_policy_of_a_wildcard_bind():
    policy = AccessPolicy("0.0.0.0", ["box.lan"])
    assert policy.host_allowed("192.168.1.20") and policy.host_allowed("box.lan") and policy.host_allowed("::1")
    assert not policy.host_allowed("evil.example")
    named = AccessPolicy("studio.lan")
    assert named.host_allowed("studio.lan") and not named.host_allowed("192.168.1.20")


def test_another_sites_page_cannot_embed_the_preview(server):
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    status, answer = call(server, "GET", "/stream.mjpg", cross)
    assert status == 403 and "another site" in answer["error"]
    same_site = {**cross, "Sec-Fetch-Site": "same-site"}  # 127.0.0.1 on another port is the same "site"
    assert call(server, "GET", "/stream.mjpg", same_site)[0] == 403
    # typing the address, or following a link to the page, is fine
    assert call(server, "GET", "/", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})[0] == 200
    assert call(server, "GET", "/stream.mjpg?fps=60", {"Sec-Fetch-Site": "same-origin"})[0] == 200


@pytest.fixture
def token_server(controller, start_control):
    srv = start_control(controller, TOKEN)
    with Feeder(controller.tap):
        yield srv
    controller.tap.close()


def test_a_token_with_a_plus_works_in_the_query_as_typed_or_encoded(token_server):
    for query in ("a+b/c=d", "a%2Bb%2Fc%3Dd", "a%2Bb/c=d"):
        assert call(token_server, "GET", f"/stream.mjpg?fps=60&token={query}")[0] == 200, query
    for wrong in ("a%20b/c=d", "a b/c=d", "ab/c=d"):
        assert call(token_server, "GET", f"/stream.mjpg?token={wrong.replace(' ', '%20')}")[0] == 401


def test_debug_log_does_not_show_the_token(token_server, caplog):
    caplog.set_level(logging.DEBUG)
    assert call(token_server, "GET", "/stream.mjpg?fps=60&token=a+b/c=d")[0] == 200
    assert call(token_server, "GET", "/stats?token=a%2Bb%2Fc%3Dd")[0] == 401  # the query is no API token
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/stream.mjpg" in logged and "token=…" in logged
    assert "a+b" not in logged and "a%2Bb" not in logged
