"""The plug-in registry shared by sources and sinks: factories keyed by URL scheme or name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config

T = TypeVar("T")
Factory = Callable[[str, "Config"], T]


class Registry(Generic[T]):
    """Maps a spec (``rtsp://…``, ``camera:0``, ``vcam``, ``out.mp4``) to the factory that builds it.

    The key is the URL scheme, else a registered ``name`` or ``name:`` prefix, else ``aliases(spec)``, else
    ``file``. Adding a protocol is one ``@registry.register("scheme")`` in one module."""

    def __init__(self, kind: str, *, aliases: Callable[[str], str | None] = lambda spec: None) -> None:
        self.kind = kind
        self._aliases = aliases
        self._factories: dict[str, Factory[T]] = {}

    def register(self, *keys: str) -> Callable[[Factory[T]], Factory[T]]:
        """Decorator registering a factory ``f(spec, config)`` under ``keys``."""

        def deco(factory: Factory[T]) -> Factory[T]:
            for key in keys:
                self._factories[key] = factory
            return factory

        return deco

    def key(self, spec: str) -> str:
        """The registry key ``spec`` resolves to (it may not be registered)."""
        if "://" in spec:
            return spec.split("://", 1)[0].lower()
        head = spec.split(":", 1)[0].lower()
        if head in self._factories and head != "file":
            return head
        return self._aliases(spec) or "file"

    def create(self, spec: str, config: Config) -> T:
        """Build the plug-in for ``spec``; an unknown scheme is a ConfigError naming it."""
        key = self.key(spec)
        try:
            factory = self._factories[key]
        except KeyError:
            known = ", ".join(sorted(self._factories))
            raise ConfigError(f"{self.kind} {spec!r}: unsupported scheme {key!r} (known: {known})") from None
        return factory(spec, config)
