"""The source plug-in protocol and its registry, keyed by URL scheme or name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config


@runtime_checkable
class Source(Protocol):
    """A producer of RGB uint8 ``H x W x 3`` frames.

    ``live`` sources feed a leaky queue (freshest frame wins); others block so that no frame is lost.
    ``read()`` returns None at end of stream and raises ``SourceError`` when the source fails;
    ``open()`` may be called again after a failure to reconnect. ``close()`` is idempotent.
    """

    name: str
    live: bool
    fps: float | None

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


SourceFactory = Callable[[str, "Config"], Source]
_REGISTRY: dict[str, SourceFactory] = {}


def register_source(*keys: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a factory for URL schemes (``"rtsp"``) or names (``"demo"``)."""

    def deco(factory: SourceFactory) -> SourceFactory:
        for key in keys:
            _REGISTRY[key] = factory
        return factory

    return deco


def source_key(spec: str) -> str:
    """The registry key for a source spec: its URL scheme, its ``name:`` prefix, or ``file``."""
    if "://" in spec:
        return spec.split("://", 1)[0].lower()
    head = spec.split(":", 1)[0].lower()
    if head in _REGISTRY and head != "file":
        return head
    if spec.startswith("/dev/video"):
        return "camera"
    return "file"


def create_source(spec: str, config: Config) -> Source:
    """Instantiate the source named by ``spec`` (not yet opened)."""
    from . import camera, demo, stream  # noqa: F401  (register the built-in plug-ins)

    key = source_key(spec)
    try:
        factory = _REGISTRY[key]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"source {spec!r}: unsupported scheme {key!r} (known: {known})") from None
    return factory(spec, config)
