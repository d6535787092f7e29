"""The sink plug-in protocol and its registry, keyed by URL scheme or name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..registry import Registry

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame


@runtime_checkable
class Sink(Protocol):
    """A consumer of composited frames (``Frame.image`` RGB ``H x W x 3`` or RGBA ``H x W x 4`` uint8).

    ``open()`` is called by the sink thread with the first frame's size; ``live`` sinks are paced to
    ``fps`` and may be reconnected after a ``SinkError`` by calling ``open()`` again. ``close()`` is
    idempotent and finalises files. A sink may also offer ``abort()``: close after a failed run without
    publishing (a file keeps its temporary name).
    """

    name: str
    live: bool
    accepts_alpha: bool

    def open(self, width: int, height: int, fps: float) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


_REGISTRY: Registry[Sink] = Registry("output")
register_sink = _REGISTRY.register
sink_key = _REGISTRY.key


def create_sink(spec: str, config: Config) -> Sink:
    """Instantiate the sink named by ``spec`` (not yet opened)."""
    from . import mjpeg, null, stream, vcam, window  # noqa: F401  (register the built-in plug-ins)

    return _REGISTRY.create(spec, config)
