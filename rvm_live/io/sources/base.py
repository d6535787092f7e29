"""The source plug-in protocol and its registry, keyed by URL scheme or name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..backoff import backoff_delays
from ..registry import Registry

if TYPE_CHECKING:
    from ...config import Config


@runtime_checkable
class Source(Protocol):
    """A producer of RGB uint8 ``H x W x 3`` frames.

    ``live`` sources feed a leaky queue (freshest frame wins); others block so that no frame is lost.
    ``reconnect``: whether the pipeline reopens it after a failure or an end of stream (cameras, network
    streams) instead of ending (files, even played ``--realtime``). ``size`` is ``(width, height)`` once open
    (None before, or when unknown); ``last_pts`` the last frame's presentation time in seconds, where it means
    something (None elsewhere). ``read()`` returns None at end of stream and raises ``SourceError`` when the
    source fails; ``open()`` may be called again after a failure to reconnect, with ``suspend()`` called
    before the first retry and ``retry_delays()`` giving the pauses between them. ``cancel_on(event)``: stop
    waiting for a peer once ``event`` is set. ``close()`` is idempotent. :class:`SourceBase` gives the defaults.
    """

    name: str
    live: bool
    fps: float | None
    reconnect: bool
    size: tuple[int, int] | None
    last_pts: float | None

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...

    def suspend(self) -> None: ...

    def retry_delays(self) -> Iterator[float]: ...

    def cancel_on(self, event: threading.Event) -> None: ...


class SourceBase:
    """The optional half of :class:`Source`, with defaults: a source reconnects when it is live, has no known
    size or timestamps, suspends by closing, retries with capped exponential backoff, and has nothing to
    cancel. Subclasses set ``name``, ``live``, ``fps`` and implement ``open``, ``read`` and ``close``."""

    name: str = ""
    live: bool = False
    fps: float | None = None
    size: tuple[int, int] | None = None
    last_pts: float | None = None
    _reconnect: bool | None = None

    @property
    def reconnect(self) -> bool:
        """Whether the pipeline reopens this source after a loss (default: whether it is live)."""
        return self.live if self._reconnect is None else self._reconnect

    @reconnect.setter
    def reconnect(self, value: bool) -> None:
        self._reconnect = bool(value)

    def close(self) -> None:
        """Release the source (idempotent)."""

    def suspend(self) -> None:
        """Between reconnection attempts: release what need not be kept (by default, everything)."""
        self.close()

    def retry_delays(self) -> Iterator[float]:
        """Pauses between reopening attempts after a loss."""
        return backoff_delays()

    def cancel_on(self, event: threading.Event) -> None:
        """Stop waiting for a peer once ``event`` is set (nothing to wait for by default)."""


def _device_path(spec: str) -> str | None:
    return "camera" if spec.startswith("/dev/video") else None  # a bare V4L2 node is a camera


_REGISTRY: Registry[Source] = Registry("source", aliases=_device_path)
register_source = _REGISTRY.register


def _register_builtins() -> None:
    from . import camera, demo, stream  # noqa: F401  (they register themselves on import)


def source_key(spec: str) -> str:
    """The registry key ``spec`` resolves to (``file`` for a path), the built-in plug-ins known."""
    _register_builtins()
    return _REGISTRY.key(spec)


def create_source(spec: str, config: Config) -> Source:
    """Instantiate the source named by ``spec`` (not yet opened)."""
    _register_builtins()
    return _REGISTRY.create(spec, config)
