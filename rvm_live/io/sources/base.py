"""The source plug-in protocol and its registry, keyed by URL scheme or name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..registry import Registry

if TYPE_CHECKING:
    from ...config import Config


@runtime_checkable
class Source(Protocol):
    """A producer of RGB uint8 ``H x W x 3`` frames.

    ``live`` sources feed a leaky queue (freshest frame wins); others block so that no frame is lost.
    A source may set ``reconnect`` (default: ``live``): whether the pipeline reopens it after a failure or
    an end of stream (cameras, network streams) instead of ending (files, even played ``--realtime``).
    ``read()`` returns None at end of stream and raises ``SourceError`` when the source fails;
    ``open()`` may be called again after a failure to reconnect. ``close()`` is idempotent.
    """

    name: str
    live: bool
    fps: float | None

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


def _device_path(spec: str) -> str | None:
    return "camera" if spec.startswith("/dev/video") else None  # a bare V4L2 node is a camera


_REGISTRY: Registry[Source] = Registry("source", aliases=_device_path)
register_source = _REGISTRY.register
source_key = _REGISTRY.key


def create_source(spec: str, config: Config) -> Source:
    """Instantiate the source named by ``spec`` (not yet opened)."""
    from . import camera, demo, stream  # noqa: F401  (register the built-in plug-ins)

    return _REGISTRY.create(spec, config)
