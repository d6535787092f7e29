"""The control server: the HTTP API (``api.py``), metrics (``metrics.py``) and the web page (``web.py``) on one
address, behind the same checks (``http.py``) and the same front end (``listener.py``).

Loopback only unless a bearer token is set. Every error answer is JSON ``{"error": "..."}``. The port is
bound when the server is made, so the CLI can make it before the model loads: a port in use fails at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ConfigError
from .api import Api
from .controller import Controller
from .http import AccessPolicy, Connection, HTTPError, RequestHandler, error_message, is_loopback
from .listener import Listener
from .metrics import CONTENT_TYPE_LATEST, registry_for
from .web import Page, serves

log = logging.getLogger(__name__)

TOKEN_ENV = "RVM_LIVE_CONTROL_TOKEN"
REQUEST_DEADLINE_S = 5.0  # the whole request (head and body, uploads included) must arrive within this

__all__ = ["TOKEN_ENV", "ControlServer", "is_loopback", "parse_address", "read_token_file"]


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


class _Handler(RequestHandler):
    """Routes one request: the checks every route shares, then the page's routes or the API's."""

    server: ControlServer  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _dispatch(self) -> None:
        app = self.server
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            self.check_access()
            if serves(self.command, path):
                app.page.handle(self, app.controller, path)
                return
            self.authorize()
            status, payload = Api(self, app.controller, app.registry).answer()
        except HTTPError as exc:
            self.send_json(exc.status, {"error": exc.message}, exc.headers)
        except (ValueError, OSError) as exc:
            status = 422 if isinstance(exc, OSError) else 400  # a file or device that cannot be used: 422
            self.send_json(status, {"error": error_message(exc)})
        except Exception as exc:  # the server keeps serving whatever the controller does
            log.exception("control API: %s %s failed", self.command, path)
            self.send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        else:
            if isinstance(payload, bytes):
                self.send_body(status, payload, CONTENT_TYPE_LATEST)
            else:
                self.send_json(status, payload)


class ControlServer:
    """The control API on ``host:port`` (port 0 picks a free one), bound at once; ``start()`` serves it from
    a daemon thread. ``allow_hosts`` are further Host names it answers to (beyond loopback and ``host``)."""

    def __init__(self, controller: Controller | None, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, allow_hosts: tuple[str, ...] | list[str] = (),
                 request_deadline_s: float = REQUEST_DEADLINE_S):
        self.controller = controller
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        if not is_loopback(host) and not self.token:
            raise ConfigError(
                f"control API on {host!r}: a non-loopback address needs a token "
                f"(--control-token or ${TOKEN_ENV}); use 127.0.0.1 to stay local"
            )
        if not request_deadline_s > 0:
            raise ValueError(f"request_deadline_s {request_deadline_s!r}: expected a positive number of seconds")
        host = host.strip("[]")
        self.policy = AccessPolicy(host, allow_hosts)
        self.request_deadline_s = request_deadline_s
        self.registry = registry_for(self)  # scrapes go through self.stats(): the controller may come later
        self.page = Page()
        try:
            self._listener = Listener((host, port), self._serve_one, deadline_s=request_deadline_s)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise ConfigError(f"control API: cannot listen on {host}:{port}: {reason}"
                              + (" (is another rvm-live running? pick another port with --control)"
                                 if port and "in use" in reason else "")) from None
        self._started = self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        host, port = self._listener.address
        return str(host), int(port)

    def start(self, controller: Controller | None = None) -> ControlServer:
        """Serve requests (for ``controller``, when given now) from a daemon thread named ``rvm-control``."""
        if controller is not None:
            self.controller = controller
        if self.controller is None:
            raise ValueError("ControlServer.start: no controller to serve")
        if not self._started and not self._closed:
            self._started = True
            self._listener.start()
            log.info("control API on http://%s:%d", *self.address)
        return self

    def close(self) -> None:
        """Stop serving, release the port and remove uploaded files; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._listener.close()
        self.page.close()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the metrics collector reads these (a controller attached at start() is found there)
    def stats(self, stream: str | None = None) -> dict[str, Any]:
        """The controller's stats."""
        return self.controller.stats(stream) if self.controller is not None else {}

    def streams(self) -> list[dict[str, Any]]:
        """The controller's streams."""
        return self.controller.streams() if self.controller is not None else []

    def _serve_one(self, connection: Connection, address: tuple) -> None:
        try:
            _Handler(connection, address, self)
        except (ConnectionError, TimeoutError) as exc:  # clients that reset or stall are routine
            log.debug("control API %s: %s", address[0], exc)
        except Exception as exc:  # noqa: BLE001 - one line; the stack at debug level
            log.warning("control API %s: %s: %s", address[0], type(exc).__name__, exc)
            log.debug("control API request failed", exc_info=True)
