"""The control API's routes: health, stats, metrics, streams, background, pause, resume and reset, for the
only stream (``/pause``) or one of several (``/streams/<id>/pause``; ids are percent-decoded UTF-8).

Every state-changing route takes JSON only (``Content-Type: application/json``), so that no other web page
can send it as a "simple request"; the server's Host/Origin checks and token come first (``control.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from prometheus_client.registry import CollectorRegistry

from ..compositing.backgrounds import check_background
from ..compositing.colors import parse_color
from ..errors import MediaError
from .controller import Controller
from .http import HTTPError, RequestHandler, path_segments
from .metrics import scrape

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, Any]]
ACTIONS = ("pause", "resume", "reset")


class Api:
    """The routes of one request: ``answer()`` finds the route and returns ``(status, payload)``."""

    def __init__(self, handler: RequestHandler, controller: Controller, registry: CollectorRegistry) -> None:
        self.handler, self.controller, self.registry = handler, controller, registry

    def answer(self) -> tuple[int, Any]:
        """``(status, JSON payload or metrics bytes)``; HTTPError for 404/405."""
        segments = path_segments(self.handler.path)
        stream: str | None = None
        if len(segments) >= 3 and segments[1] == "streams" and segments[2]:  # /streams/<id>[/<what>]
            stream = segments[2]
            try:
                self.controller.session(stream)
            except KeyError as exc:
                raise HTTPError(404, str(exc.args[0])) from None
            what = "/" + "/".join(segments[3:]) if len(segments) > 3 else ""
            routes = self._stream_routes(stream)
        else:
            what = "/" + "/".join(segments[1:])
            routes = self._routes()
        what = what.rstrip("/") or ("/" if stream is None else "")
        route = routes.get((self.handler.command, what))
        if route is None:
            shown = f"/streams/{stream}{what}" if stream is not None else what
            allowed = sorted(m for m, p in routes if p == what)
            if allowed:
                raise HTTPError(405, f"{self.handler.command} not allowed on {shown}", {"Allow": ", ".join(allowed)})
            raise HTTPError(404, f"no such endpoint: {shown}")
        if self.handler.command == "POST":
            self.handler.require_json()
        return route()

    def _routes(self) -> dict[tuple[str, str], Route]:
        routes: dict[tuple[str, str], Route] = {
            ("GET", "/health"): self._health,
            ("GET", "/stats"): lambda: (200, self._stats(None)),
            ("GET", "/metrics"): lambda: (200, scrape(self.registry)),
            ("GET", "/streams"): lambda: (200, {"streams": self.controller.streams()}),
            ("POST", "/background"): lambda: self._background(None),
        }
        for action in ACTIONS:
            routes[("POST", f"/{action}")] = lambda a=action: self._action(a, None)
        return routes

    def _stream_routes(self, stream: str) -> dict[tuple[str, str], Route]:
        routes: dict[tuple[str, str], Route] = {
            ("GET", ""): lambda: (200, self.controller.health(stream)),
            ("GET", "/health"): lambda: (200, self.controller.health(stream)),
            ("GET", "/stats"): lambda: (200, self._stats(stream)),
            ("POST", "/background"): lambda: self._background(stream),
        }
        for action in ACTIONS:
            routes[("POST", f"/{action}")] = lambda a=action: self._action(a, stream)
        return routes

    def _health(self) -> tuple[int, Any]:
        health = self.controller.health()
        # a controller that reports {"ok": false} is unhealthy to load balancers too
        return (503 if health.get("ok") is False else 200), health

    def _stats(self, stream: str | None) -> dict[str, Any]:
        stats = self.controller.stats(stream)
        for data in (stats, *(stats.get("streams") or {}).values()):
            _add_background_color(data)
        return stats

    def _background(self, stream: str | None) -> tuple[int, Any]:
        body = self.handler.read_json()
        spec = body.get("bg") if isinstance(body, dict) else None
        if not isinstance(spec, str):
            raise HTTPError(400, 'expected a JSON object {"bg": "<background spec>"}')
        try:
            check_background(spec)  # a missing or unreadable file is refused here, before the pipeline sees it
            self.controller.set_background(spec, stream)
        except MediaError as exc:
            # the same answer for every unusable path, so the API does not tell which files exist
            log.info("control API: background %s refused: %s", spec, exc)
            raise HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY,
                            f"background {spec!r}: not a usable image or video file") from None
        log.info("control API: background set to %s", spec)
        return 200, {"ok": True, "bg": spec}

    def _action(self, name: str, stream: str | None) -> tuple[int, Any]:
        self.handler.read_json()  # a body is allowed and ignored, but still size-limited and JSON
        {"pause": self.controller.pause, "resume": self.controller.resume, "reset": self.controller.reset}[name](stream)
        log.info("control API: %s%s", name, f" (stream {stream})" if stream is not None else "")
        return 200, {"ok": True}


def _add_background_color(stats: dict[str, Any]) -> None:
    """``background_color``: the ``#rrggbb`` a colour background really is, so the page's swatch shows the
    colour the daemon uses for a name like "green"."""
    spec = stats.get("background")
    if isinstance(spec, str):
        try:
            stats["background_color"] = "#{:02x}{:02x}{:02x}".format(*parse_color(spec))
        except ValueError:
            pass  # an image, a video, blur or transparent
