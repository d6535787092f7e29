"""The embedded demo: a real talking-head clip (carphone, 176x144, 120 frames) played like a file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...assets import demo_clip
from ...errors import SourceError, WeightsError
from .base import register_source
from .stream import StreamSource

if TYPE_CHECKING:
    from ...config import Config


class DemoSource(StreamSource):
    """The demo clip, fetched (SHA-256 pinned) on first ``open()`` and then decoded as a file."""

    def __init__(self, config: Config) -> None:
        super().__init__("demo", realtime=config.realtime, loop=config.loop, fps=config.fps)
        self._offline = config.offline

    def open(self) -> None:
        """Fetch the clip if it is not cached yet, then open it."""
        try:
            self.target = str(demo_clip(offline=self._offline or None))
        except WeightsError as exc:
            # Surface it as a source failure: to the pipeline the demo is just a source that can't open.
            raise SourceError(f"demo clip unavailable: {exc}") from exc
        super().open()


@register_source("demo")
def demo_source(spec: str, config: Config) -> DemoSource:
    """Factory for ``demo`` (any ``demo:...`` suffix is ignored)."""
    return DemoSource(config)
