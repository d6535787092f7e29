"""HTTP basics shared by the API routes and the web page: errors, who may call (Host, Origin, token),
request bodies under the request's deadline, and JSON answers.

A request handler here serves exactly one request per connection (HTTP/1.0 answers), whose head (and a
small body) the listener (``listener.py``) has already read within the request's deadline.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import re
import socket
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # JSON bodies; the listener reads bodies up to this before a worker is involved
MAX_JSON_DEPTH = 16  # a background request is one flat object; deeper is abuse, refused before it costs anything
WRITE_TIMEOUT_S = 5.0  # an answer that cannot be written in this long is given up (a client that never reads)
DRAIN_LIMIT = 1 << 20  # an oversized body up to this size is read and dropped, so the client sees the answer
_TOKEN_IN_LOG = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


class HTTPError(Exception):
    """An error answer: status code and message (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other hostname may resolve anywhere


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class AccessPolicy:
    """Which ``Host`` names the server answers, and which pages may call it.

    - ``Host``: loopback names and addresses, the bound address, and the names in ``allow_hosts``. A DNS
      rebinding page reaches us under its own name, so it is refused; an IP address cannot be rebound, so
      on a wildcard bind (0.0.0.0, ::) every address of the machine is fine.
    - ``Origin``, when a browser sends one, must be this server's own (the page itself): a page on any
      other origin, another port of the same host included, is refused.
    - ``Sec-Fetch-Site``: a browser's sub-request from another site (an ``<img>`` of ``/stream.mjpg``, a
      no-cors fetch) is refused; navigating to a URL is fine.
    """

    def __init__(self, bind_host: str, allow_hosts: tuple[str, ...] | list[str] = ()) -> None:
        bind = bind_host.strip("[]").lower()
        ip = _ip(bind)
        self.any_address = ip is not None and ip.is_unspecified
        self.names = {"localhost", *(h.strip().strip("[]").lower() for h in allow_hosts if h.strip())}
        if not self.any_address:
            self.names.add(str(ip) if ip is not None else bind)

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (a Host header's name, without the port) names this server."""
        name = host.strip().strip("[]").lower().rstrip(".")
        ip = _ip(name)
        if ip is not None:
            return ip.is_loopback or self.any_address or str(ip) in self.names
        return name in self.names

    def check(self, headers: Any) -> None:
        """Refuse (HTTPError 403) a request under a foreign Host, from a foreign Origin or a foreign page."""
        host = (headers.get("Host") or "").strip()
        if host and not self.host_allowed(_host_name(host)):
            raise HTTPError(HTTPStatus.FORBIDDEN, f"Host {host!r} is not this server: use 127.0.0.1 or localhost, "
                                                  "or allow the name with --control-allow-host")
        origin = headers.get("Origin")
        if origin is not None and not _same_origin(origin, host):
            raise HTTPError(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin!r} refused")
        site, mode = headers.get("Sec-Fetch-Site", ""), headers.get("Sec-Fetch-Mode", "")
        if site in ("cross-site", "same-site") and mode != "navigate":
            raise HTTPError(HTTPStatus.FORBIDDEN, "request from another site's page refused")


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str) -> bool:
    parts = urllib.parse.urlsplit(origin.strip())
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def query_values(path: str, name: str) -> list[str]:
    """The values of ``name`` in ``path``'s query, percent-decoded as UTF-8. A ``+`` stays a ``+``: media
    players send what the user typed, and a token may hold one."""
    values = []
    for pair in urllib.parse.urlsplit(path).query.split("&"):
        key, sep, value = pair.partition("=")
        if sep and urllib.parse.unquote(key) == name:
            values.append(urllib.parse.unquote(value))
    return values


def path_segments(path: str) -> list[str]:
    """The path's segments, each percent-decoded as UTF-8 (what a browser sends for a non-ASCII id); a
    segment that is not UTF-8 is kept as sent."""
    segments = []
    for raw in urllib.parse.urlsplit(path).path.split("/"):
        try:  # http.server decodes the request line as Latin-1: those are the bytes on the wire
            segments.append(urllib.parse.unquote_to_bytes(raw.encode("latin-1")).decode("utf-8"))
        except (UnicodeEncodeError, UnicodeDecodeError):
            segments.append(raw)
    return segments


def redact(text: str) -> str:
    """``text`` with every ``token=…`` value hidden (request lines go to the debug log)."""
    return _TOKEN_IN_LOG.sub(r"\1…", text)


def nesting(raw: bytes) -> int:
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


class Settings(Protocol):
    """What a handler needs of its server."""

    token: str | None
    policy: AccessPolicy
    request_deadline_s: float


class Connection:
    """An accepted connection, with what the listener already read of it and when the request must be in."""

    def __init__(self, sock: socket.socket, head: bytes, deadline: float) -> None:
        self.sock, self.head, self.deadline = sock, head, deadline


class _Prefixed(io.RawIOBase):
    """Reads ``prefix`` first, then the socket."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix, self._sock = memoryview(prefix), sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(buffer)


class _Writer:
    """``wfile``: every write is one ``sendall`` under the socket's timeout."""

    closed = False

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""


class RequestHandler(BaseHTTPRequestHandler):
    """One request: the checks every route shares, bodies under the deadline, JSON answers."""

    server: Settings  # type: ignore[assignment]
    request: Connection
    server_version = "rvm-live-control"

    def setup(self) -> None:
        self.connection = self.request.sock
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.rfile = io.BufferedReader(_Prefixed(self.request.head, self.connection))
        self.wfile = _Writer(self.connection)  # type: ignore[assignment]

    def finish(self) -> None:
        self.rfile.close()

    # ----- who may call ------------------------------------------------------------------------------
    def check_access(self) -> None:
        """Host, Origin and foreign-page checks (403), for every route, the page included."""
        self.server.policy.check(self.headers)

    def authorize(self, *, query_token: bool = False) -> None:
        """The bearer token, when the server has one (401 otherwise); with ``query_token`` a ``?token=`` also
        counts (an ``<img>`` or a media player cannot send headers)."""
        token = self.server.token
        if token is None:
            return
        expected = token.encode("utf-8")
        if query_token and any(hmac.compare_digest(g.encode("utf-8"), expected)
                               for g in query_values(self.path, "token")):
            return
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        try:
            # http.server decodes headers as Latin-1; the bytes on the wire are what clients send (UTF-8)
            given_bytes = given.strip().encode("latin-1")
        except UnicodeEncodeError:
            given_bytes = b""
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, expected):
            self.discard_body()
            raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    def content_type(self) -> str:
        """The request's media type, lower case, without parameters."""
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def require_json(self) -> None:
        """State-changing API requests must say they are JSON: a page on another origin cannot send that
        without the browser asking us first (a CORS preflight, which we never grant)."""
        if self.content_type() != "application/json":
            self.discard_body()
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"Content-Type {self.content_type() or 'none'!r}: send application/json")

    # ----- bodies ------------------------------------------------------------------------------------
    def content_length(self) -> int:
        """The Content-Length, 0 when absent; 400 when malformed."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if length < 0:
            raise HTTPError(400, "bad Content-Length")
        return length

    def read_body(self, limit: int = MAX_BODY) -> bytes:
        """The whole body, at most ``limit`` bytes (413 beyond), within the request's deadline (408)."""
        length = self.content_length()
        if length > limit:
            self.discard_body()
            raise HTTPError(413, f"request body of {length} bytes exceeds the {limit}-byte limit")
        return self.read_exactly(length)

    def read_exactly(self, length: int) -> bytes:
        """``length`` bytes of body, all before the request's deadline (a trickling client is cut off)."""
        chunks = []
        try:
            while length > 0:
                remaining = self.request.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(length, 65536))
                if not chunk:
                    raise HTTPError(HTTPStatus.BAD_REQUEST, "request body shorter than its Content-Length")
                chunks.append(chunk)
                length -= len(chunk)
        except TimeoutError:
            self.close_connection = True
            raise HTTPError(HTTPStatus.REQUEST_TIMEOUT,
                            f"request not received within {self.server.request_deadline_s:g} s") from None
        finally:
            self.connection.settimeout(WRITE_TIMEOUT_S)
        return b"".join(chunks)

    def discard_body(self, limit: int = DRAIN_LIMIT) -> None:
        """Read and drop the body (up to ``limit``), so the client sees the error answer, not a reset."""
        try:
            length = self.content_length()
        except HTTPError:
            length = 0
        if length > limit:
            self.close_connection = True
            return  # not worth reading; the connection closes after the answer anyway
        try:
            self.read_exactly(length)
        except HTTPError:
            pass  # short or slow: the answer goes out anyway

    def read_json(self) -> Any:
        """The body as JSON: 400 when malformed or nested deeper than ``MAX_JSON_DEPTH``."""
        raw = self.read_body()
        if nesting(raw) > MAX_JSON_DEPTH:
            raise HTTPError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(raw) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    # ----- answers -----------------------------------------------------------------------------------
    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON errors also for what http.server rejects itself (bad request line, unknown method)."""
        self.close_connection = True
        self.send_json(code, {"error": message or HTTPStatus(code).phrase})

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """``payload`` as a JSON answer."""
        self.send_body(status, json.dumps(payload, default=str).encode(), "application/json", headers)

    def send_body(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        """A whole answer, never cached."""
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
        """Request lines at debug level, with any ``?token=`` hidden."""
        log.debug("control API %s: %s", self.address_string(), redact(format % args))


def error_message(exc: OSError | ValueError) -> str:
    """What an answer may say about ``exc``: never a file name (it would show where we are installed)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc.strerror or type(exc).__name__
    return str(exc)
