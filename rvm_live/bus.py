"""One typed bus for everything that happens to a stream and must reach someone on another thread.

Stages post events; the daemon's thread reads errors off it to stop and exit non-zero, and observers
subscribe to the kinds they care about: each stream's session keeps its source state, outage counts,
quality changes and end from them, the sink workers follow their stream's source (to show "no signal"),
and the daemon logs quality changes. Nothing else crosses threads by reaching into another stage's
attributes (GStreamer's bus: elements post, the application reads).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Something that happened to one stream (``stream_id``); ``None`` means the daemon as a whole."""

    stream_id: str | None


@dataclass(frozen=True)
class ErrorEvent(Event):
    """A stage failed; the daemon stops and the caller sees ``error`` as the cause."""

    stage: str
    error: BaseException


@dataclass(frozen=True)
class EndOfStreamEvent(Event):
    """A stream's source is exhausted and its frames have all reached the outputs' queues."""


@dataclass(frozen=True)
class SourceLost(Event):
    """A live source was lost; the capture stage retries it with backoff."""

    cause: str


@dataclass(frozen=True)
class SourceBack(Event):
    """A lost (or not yet reachable) source is up again, after ``outage_s`` seconds."""

    outage_s: float


@dataclass(frozen=True)
class SinkLost(Event):
    """A live output failed; its worker reconnects with backoff."""

    sink: str
    cause: str


@dataclass(frozen=True)
class SinkBack(Event):
    """A lost output reconnected."""

    sink: str


@dataclass(frozen=True)
class QualityChanged(Event):
    """The quality governor picked a new downsample ratio for a stream (QoS)."""

    ratio: float
    previous: float
    step_ms: float
    reason: str


@dataclass(frozen=True)
class QualityFloor(Event):
    """At the quality floor (the governor's lowest rung) a frame takes longer than the stream can give it
    (``overloaded``): the live queue drops frames rather than the matte collapsing; or it fits again."""

    overloaded: bool
    ratio: float
    step_ms: float
    limit_ms: float


Handler = Callable[[Event], None]


class Bus:
    """Thread-safe: ``post`` from any thread; handlers run synchronously in the poster's thread, so they
    must be quick; errors are also queued for the daemon's thread (``next_error``)."""

    def __init__(self) -> None:
        self._handlers: list[tuple[type[Event], Handler]] = []
        self._lock = threading.Lock()
        self._errors: queue.Queue[ErrorEvent] = queue.Queue()

    def subscribe(self, kind: type[Event], handler: Handler) -> None:
        """Call ``handler(event)`` for every posted event that is an instance of ``kind``."""
        with self._lock:
            self._handlers.append((kind, handler))

    def post(self, event: Event) -> None:
        """Deliver ``event``; a failing handler is logged and never breaks the poster."""
        if isinstance(event, ErrorEvent):
            self._errors.put(event)
        with self._lock:
            handlers = [h for kind, h in self._handlers if isinstance(event, kind)]
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # noqa: BLE001 - an observer must never take a stage down
                log.exception("bus handler %r failed on %r", handler, event)

    def next_error(self) -> ErrorEvent | None:
        """The oldest unread error, or None."""
        try:
            return self._errors.get_nowait()
        except queue.Empty:
            return None
