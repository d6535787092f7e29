"""The sink plug-in protocol and its registry, keyed by URL scheme or name."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..registry import Registry

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame


@runtime_checkable
class Sink(Protocol):
    """A consumer of composited frames (``Frame.image`` RGB ``H x W x 3`` or RGBA ``H x W x 4`` uint8).

    ``open()`` is called by the sink thread with the first frame's size; ``live`` sinks are paced to
    ``fps`` and may be reconnected after a ``SinkError`` by calling ``open()`` again. ``accepts_alpha``:
    whether it takes RGBA (a sink that does not is only ever given RGB). ``close()`` is idempotent and
    finalises files; ``abort(reason)`` closes after a failed or interrupted run without publishing (a file
    keeps its temporary name); exactly one of them ends a run. ``cancel_on(event)``: stop waiting for a peer
    once ``event`` is set. :class:`SinkBase` gives the defaults.
    """

    name: str
    live: bool
    accepts_alpha: bool

    def open(self, width: int, height: int, fps: float) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...

    def abort(self, reason: str = "the run failed") -> None: ...

    def cancel_on(self, event: threading.Event) -> None: ...


class SinkBase:
    """The optional half of :class:`Sink`, with defaults: RGB only, aborting is closing (nothing is published
    that a close would not publish), and nothing to cancel. Subclasses set ``name`` and ``live`` and
    implement ``open``, ``write`` and ``close``."""

    name: str = ""
    live: bool = False
    accepts_alpha: bool = False

    def close(self) -> None:
        """Release the output (idempotent)."""

    def abort(self, reason: str = "the run failed") -> None:
        """Close after a failed or interrupted run; by default the same as ``close()``."""
        self.close()

    def cancel_on(self, event: threading.Event) -> None:
        """Stop waiting for a peer once ``event`` is set (nothing to wait for by default)."""


_REGISTRY: Registry[Sink] = Registry("output")
register_sink = _REGISTRY.register


def _register_builtins() -> None:
    from . import mjpeg, null, stream, vcam, window  # noqa: F401  (they register themselves on import)


def sink_key(spec: str) -> str:
    """The registry key ``spec`` resolves to (``file`` for a path), the built-in plug-ins known."""
    _register_builtins()
    return _REGISTRY.key(spec)


def create_sink(spec: str, config: Config) -> Sink:
    """Instantiate the sink named by ``spec`` (not yet opened)."""
    _register_builtins()
    return _REGISTRY.create(spec, config)
