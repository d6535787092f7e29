"""HTTP control API of the running daemon: health, stats, Prometheus metrics, background and pause control.

Loopback only unless a bearer token is set. Every error answer is JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..compositing.backgrounds import check_background
from ..errors import ConfigError, MediaError
from . import web

log = logging.getLogger(__name__)

TOKEN_ENV = "RVM_LIVE_CONTROL_TOKEN"
MAX_BODY = 64 * 1024
MAX_JSON_DEPTH = 16  # a background request is one flat object; deeper is abuse, refused before it costs anything
BODY_TIMEOUT_S = 2.0  # the whole body must arrive within this (a slow client cannot hold a worker)
WORKERS = 16  # requests served at once; more wait in a queue of QUEUED, beyond that they get a 503
QUEUED = 64
BACKLOG = 64
_DRAIN_LIMIT = 1 << 20  # an oversized body up to this size is read and dropped, so the client sees the 413
_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


class Controller(Protocol):
    """What the control API drives; the pipeline implements it."""

    def health(self, stream: str | None = None) -> dict[str, Any]: ...
    def stats(self, stream: str | None = None) -> dict[str, Any]: ...
    def streams(self) -> list[dict[str, Any]]: ...
    def set_background(self, spec: str, stream: str | None = None) -> None: ...
    def pause(self, stream: str | None = None) -> None: ...
    def resume(self, stream: str | None = None) -> None: ...
    def reset(self, stream: str | None = None) -> None: ...


class StatsCollector(Collector):
    """Prometheus collector that reads ``controller.stats()`` at scrape time."""

    _COUNTERS = {
        "frames_in": "Frames received from the source",
        "frames_out": "Frames matted and handed to the outputs",
        "frames_dropped": "Frames dropped by the leaky queues or while an output was down",
    }

    def __init__(self, controller: Controller):
        self._controller = controller

    def describe(self) -> list[Metric]:
        return []  # nothing to describe up front: registering must not call stats()

    def collect(self) -> Iterator[Metric]:
        stats = self._controller.stats()
        # one sample per stream, labelled with its id (the single stream of a plain run is stream "0")
        per_stream = stats.get("streams") or {_only_stream(self._controller): stats}
        counters = {key: CounterMetricFamily(f"rvm_live_{key}", doc, labels=["stream"])
                    for key, doc in self._COUNTERS.items()}
        latency = GaugeMetricFamily("rvm_live_latency_seconds", "Capture-to-output latency",
                                    labels=["stream", "quantile"])
        gauges: dict[str, GaugeMetricFamily] = {}
        for stream_id, data in per_stream.items():
            for key, family in counters.items():
                if _is_number(data.get(key)):
                    family.add_metric([stream_id], data[key])
            for name, q in (("p50", "0.5"), ("p95", "0.95"), ("max", "1")):
                value = (data.get("latency_ms") or {}).get(name)
                if _is_number(value):
                    latency.add_metric([stream_id, q], value / 1000)
            for key, value in data.items():  # every other number (fps_out, downsample_ratio, paused, ...)
                if key not in self._COUNTERS and _is_number(value):
                    name = "rvm_live_" + _METRIC_NAME.sub("_", key)
                    gauges.setdefault(key, GaugeMetricFamily(name, f"stats[{key!r}]", labels=["stream"]))
                    gauges[key].add_metric([stream_id], float(value))
        yield from (f for f in counters.values() if f.samples)
        if latency.samples:
            yield latency
        info = {k: str(stats[k]) for k in ("backbone", "device") if stats.get(k) is not None}
        if info:
            yield InfoMetricFamily("rvm_live_model", "Model backbone and inference device", value=info)
        yield from gauges.values()


def _only_stream(controller: Controller) -> str:
    streams = getattr(controller, "streams", None)
    listed = streams() if callable(streams) else []
    return str(listed[0]["id"]) if len(listed) == 1 else "0"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float))  # bool included: a flag becomes a 0/1 gauge


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other hostname may resolve anywhere


def read_token_file(path: str) -> str:
    """The bearer token from the first line of ``path`` (kept out of the process list); ConfigError if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"control_token_file {path!r}: cannot read it ({exc.__class__.__name__})") from None
    if not token:
        raise ConfigError(f"control_token_file {path!r}: the first line is empty")
    return token


def parse_address(spec: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` as ``(host, port)``; ConfigError when malformed."""
    host, sep, port = spec.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or (not sep and host):
        port = ""  # an unbracketed IPv6 address is ambiguous
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"control address {spec!r}: expected host:port, [ipv6]:port or port")
    return host or default_host, int(port)


class _HTTPServer(HTTPServer):
    """Accepts on one thread and serves from a fixed pool: a flood of connections costs a bounded number
    of threads; when the pool and its queue are full, a connection gets a 503 at once."""

    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], app: ControlServer):
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self._pending: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(QUEUED)
        self._workers = [threading.Thread(target=self._work, name=f"rvm-control-{i}", daemon=True)
                         for i in range(WORKERS)]
        for worker in self._workers:
            worker.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self._pending.put_nowait((request, client_address))
        except queue.Full:
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)

    def _work(self) -> None:
        while (item := self._pending.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - handle_error decides how loud
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that reset or time out are routine: debug level. Anything else: one line (stack at debug)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("control API %s: %s", client_address[0], exc)
        else:
            log.warning("control API %s: %s: %s", client_address[0], type(exc).__name__, exc)
            log.debug("control API request failed", exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            try:
                self._pending.put_nowait(None)
            except queue.Full:
                break  # daemon threads: they end with the process


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 27\r\n"
         b"Connection: close\r\nRetry-After: 1\r\n\r\n{\"error\": \"server is busy\"}")


class ControlServer:
    """The control API on ``host:port`` (port 0 picks a free one); ``start()`` serves from a daemon thread."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None):
        self.controller = controller
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        if not is_loopback(host) and not self.token:
            raise ConfigError(
                f"control API on {host!r}: a non-loopback address needs a token "
                f"(--control-token or ${TOKEN_ENV}); use 127.0.0.1 to stay local"
            )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(controller))
        host = host.strip("[]")
        try:
            self._server = _HTTPServer((host, port), self)
        except OSError as exc:
            raise OSError(exc.errno, f"control API: cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> ControlServer:
        """Serve requests from a daemon thread named ``rvm-control``."""
        if self._thread is None and not self._closed:
            serve = self._server.serve_forever
            self._thread = threading.Thread(
                target=serve, kwargs={"poll_interval": 0.1}, name="rvm-control", daemon=True
            )
            self._thread.start()
            log.info("control API on http://%s:%d", *self.address)
        return self

    def close(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:  # shutdown() would wait forever on a loop that never ran
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class HTTPError(Exception):
    """An error answer: status code and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}



def _nesting(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting in a JSON text (brackets inside strings ignored), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _error_status(exc: Exception) -> int:
    """400 for a bad value, 422 for a file or device that cannot be used."""
    return HTTPStatus.UNPROCESSABLE_ENTITY if isinstance(exc, OSError) else HTTPStatus.BAD_REQUEST


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = BODY_TIMEOUT_S  # per read: a stalled client cannot hold a worker
    server_version = "rvm-live-control"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _routes(self) -> dict[tuple[str, str], Callable[[], tuple[int, Any]]]:
        return {
            ("GET", "/health"): self._health,
            ("GET", "/stats"): lambda: (200, self.server.app.controller.stats()),
            ("GET", "/metrics"): self._metrics,
            ("GET", "/streams"): lambda: (200, {"streams": self.server.app.controller.streams()}),
            ("POST", "/background"): self._background,
            ("POST", "/pause"): lambda: self._action("pause"),
            ("POST", "/resume"): lambda: self._action("resume"),
            ("POST", "/reset"): lambda: self._action("reset"),
        }

    def _stream_routes(self, path: str) -> tuple[str, dict[tuple[str, str], Callable[[], tuple[int, Any]]]]:
        """``/streams/<id>/<action>`` acts on one stream: the same actions as the top-level routes."""
        _, _, stream_id, *rest = path.split("/")
        controller = self.server.app.controller
        controller.session(stream_id)  # KeyError for an unknown stream → 404 below
        prefix = f"/streams/{stream_id}"
        routes = {
            ("GET", prefix): lambda: (200, controller.health(stream_id)),
            ("GET", f"{prefix}/health"): lambda: (200, controller.health(stream_id)),
            ("GET", f"{prefix}/stats"): lambda: (200, controller.stats(stream_id)),
            ("POST", f"{prefix}/background"): lambda: self._background(stream_id),
        }
        for action in ("pause", "resume", "reset"):
            routes[("POST", f"{prefix}/{action}")] = lambda a=action: self._action(a, stream_id)
        return path, routes

    def _dispatch(self) -> None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if web.serves(self.command, path):  # the web page, its preview stream and uploads (rvm_live/web)
                web.handle(self, path)
                return
            self._authorize()
            if path.startswith("/streams/"):
                try:
                    path, routes = self._stream_routes(path)
                except KeyError as exc:
                    raise HTTPError(404, str(exc.args[0])) from None
            else:
                routes = self._routes()
            handler = routes.get((self.command, path))
            if handler is None:
                allowed = sorted(m for m, p in routes if p == path)
                if allowed:
                    allow = {"Allow": ", ".join(allowed)}
                    raise HTTPError(405, f"{self.command} not allowed on {path}", allow)
                raise HTTPError(404, f"no such endpoint: {path}")
            status, payload = handler()
        except HTTPError as exc:
            self._send_json(exc.status, {"error": exc.message}, exc.headers)
        except (ValueError, OSError) as exc:
            self._send_json(_error_status(exc), {"error": str(exc)})
        except Exception as exc:  # the server keeps serving whatever the controller does
            log.exception("control API: %s %s failed", self.command, path)
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        else:
            if isinstance(payload, bytes):
                self._send(status, payload, CONTENT_TYPE_LATEST)
            else:
                self._send_json(status, payload)

    def _authorize(self) -> None:
        token = self.server.app.token
        if token is None:
            return
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        try:
            # http.server decodes headers as Latin-1; the bytes on the wire are what clients send (UTF-8)
            given_bytes = given.strip().encode("latin-1")
        except UnicodeEncodeError:
            given_bytes = b""
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token.encode("utf-8")):
            self._discard_body()
            raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def _health(self) -> tuple[int, Any]:
        health = self.server.app.controller.health()
        # a controller that reports {"ok": false} is unhealthy to load balancers too
        return (503 if health.get("ok") is False else 200), health

    def _metrics(self) -> tuple[int, bytes]:
        return 200, generate_latest(self.server.app.registry)

    def _background(self, stream: str | None = None) -> tuple[int, Any]:
        body = self._read_json()
        spec = body.get("bg") if isinstance(body, dict) else None
        if not isinstance(spec, str):
            raise HTTPError(400, 'expected a JSON object {"bg": "<background spec>"}')
        try:
            check_background(spec)  # a missing or unreadable file is refused here, before the pipeline sees it
            self.server.app.controller.set_background(spec, *([stream] if stream is not None else []))
        except MediaError as exc:
            # the same answer for every unusable path, so the API does not tell which files exist
            log.info("control API: background %s refused: %s", spec, exc)
            raise HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY,
                            f"background {spec!r}: not a usable image or video file") from None
        log.info("control API: background set to %s", spec)
        return 200, {"ok": True, "bg": spec}

    def _action(self, name: str, stream: str | None = None) -> tuple[int, Any]:
        self._read_body()  # a body is allowed and ignored, but still size-limited
        getattr(self.server.app.controller, name)(*([stream] if stream is not None else []))
        log.info("control API: %s", name)
        return 200, {"ok": True}

    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if length < 0:
            raise HTTPError(400, "bad Content-Length")
        return length

    def _read_body(self) -> bytes:
        length = self._content_length()
        if length > MAX_BODY:
            self._discard_body()
            raise HTTPError(413, f"request body of {length} bytes exceeds the {MAX_BODY}-byte limit")
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> bytes:
        """``length`` bytes of body, all within ``BODY_TIMEOUT_S`` (a trickling client is cut off)."""
        chunks, deadline = [], time.monotonic() + BODY_TIMEOUT_S
        while length > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HTTPError(HTTPStatus.REQUEST_TIMEOUT, f"request body not received within {BODY_TIMEOUT_S:g} s")
            self.connection.settimeout(remaining)
            try:
                chunk = self.rfile.read1(min(length, 65536))
            except TimeoutError:
                raise HTTPError(HTTPStatus.REQUEST_TIMEOUT,
                                f"request body not received within {BODY_TIMEOUT_S:g} s") from None
            if not chunk:
                raise HTTPError(HTTPStatus.BAD_REQUEST, "request body shorter than its Content-Length")
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _discard_body(self) -> None:
        try:
            length = self._content_length()
        except HTTPError:
            length = 0
        if length > _DRAIN_LIMIT:
            return  # not worth reading; the connection closes after the answer anyway
        try:
            self._read_exactly(length)
        except HTTPError:
            pass  # short or slow: the answer goes out anyway

    def _read_json(self) -> Any:
        raw = self._read_body()
        if _nesting(raw) > MAX_JSON_DEPTH:
            raise HTTPError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON errors also for what http.server rejects itself (bad request line, unknown method)."""
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, default=str).encode()
        self._send(status, body, "application/json", headers)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("control API %s: " + format, self.address_string(), *args)
