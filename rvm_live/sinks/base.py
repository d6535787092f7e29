"""The sink plug-in protocol and its registry, keyed by URL scheme or name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from ..frame import Frame


@runtime_checkable
class Sink(Protocol):
    """A consumer of composited frames (``Frame.image`` RGB ``H x W x 3`` or RGBA ``H x W x 4`` uint8).

    ``open()`` is called by the sink thread with the first frame's size; ``live`` sinks are paced to
    ``fps`` and may be reconnected after a ``SinkError`` by calling ``open()`` again. ``close()`` is
    idempotent and finalises files.
    """

    name: str
    live: bool
    accepts_alpha: bool

    def open(self, width: int, height: int, fps: float) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


SinkFactory = Callable[[str, "Config"], Sink]
_REGISTRY: dict[str, SinkFactory] = {}


def register_sink(*keys: str) -> Callable[[SinkFactory], SinkFactory]:
    """Register a factory for URL schemes (``"rtsp"``), names (``"vcam"``) or file suffixes (``".mp4"``)."""

    def deco(factory: SinkFactory) -> SinkFactory:
        for key in keys:
            _REGISTRY[key] = factory
        return factory

    return deco


def sink_key(spec: str) -> str:
    """The registry key for an output spec: URL scheme, a bare name, else ``file``."""
    if "://" in spec:
        return spec.split("://", 1)[0].lower()
    head = spec.split(":", 1)[0].lower()
    if head in _REGISTRY and head != "file":
        return head
    return "file"


def create_sink(spec: str, config: Config) -> Sink:
    """Instantiate the sink named by ``spec`` (not yet opened)."""
    from . import null, stream, vcam, window  # noqa: F401  (register the built-in plug-ins)

    key = sink_key(spec)
    try:
        factory = _REGISTRY[key]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"output {spec!r}: unsupported scheme {key!r} (known: {known})") from None
    return factory(spec, config)
