"""The single-stream pipeline API of the first version, now a one-session ``Daemon``.

``Pipeline(config, matter=..., source=..., sinks=...)`` and ``run_pipeline(config)`` keep working for
embedding and tests; the work is done by ``daemon.Daemon``, ``session.Session`` and the stages in
``rvm_live/stages``. Reading order for a newcomer: ``frame.py`` → ``queues.py`` → ``daemon.py`` → a stage.
"""

from __future__ import annotations

from typing import Any

from .config import Config
from .engine.matter import Matter
from .frame import Frame
from .io.sinks.base import Sink
from .io.sources.base import Source
from .runtime.daemon import Daemon
from .runtime.inference import InferenceStage
from .runtime.session import default_outputs

__all__ = ["Pipeline", "default_outputs", "run_pipeline"]


class Pipeline(Daemon):
    """A daemon of one stream, with that stream's parts as attributes (``source``, ``sinks``, ``workers``,
    ``paused``, ``matter``) and ``process(frame)`` to matte one frame in the caller's thread."""

    def __init__(self, config: Config, *, matter: Matter | None = None, source: Source | None = None,
                 sinks: list[Sink] | None = None) -> None:
        # a Matter brings its engine and its stream's state (tests and embedding reuse a loaded model)
        engine = matter.core if matter is not None else None
        super().__init__(config, engine=engine, states=[matter._state] if matter is not None else None,
                         source=source, sinks=sinks)
        self._one = self.session()
        self._direct: InferenceStage | None = None

    source = property(lambda self: self._one.source)
    sinks = property(lambda self: self._one.sinks)
    workers = property(lambda self: self._one.workers)
    paused = property(lambda self: self._one.paused)
    chunk = property(lambda self: self._one.chunk)
    state = property(lambda self: self._one.state)

    def process(self, frame: Frame) -> Frame:
        """Matte and composite one frame now, in this thread (the source must be open)."""
        if self._direct is None:
            self._direct = InferenceStage([self._one], self.engine, stop=self.stop_event, bus=self.bus,
                                          doorbell=self.doorbell)
        return self._direct.matte_one(self._one, frame)


def run_pipeline(config: Config, **kwargs: Any) -> dict[str, Any]:
    """Build, run and close a daemon for ``config`` (one stream or several); returns its stats."""
    if kwargs:
        return Pipeline(config, **kwargs).run()
    return Daemon(config).run()
