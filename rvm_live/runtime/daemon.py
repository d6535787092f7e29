"""The daemon: builds one session per stream around one shared engine, owns the threads and the stop, reads
the bus, and implements the controller that the control API and SIGHUP drive.

Threads: one capture thread per stream, one inference thread and one render thread for all of them, one
thread per output. One stop event; every failure reaches the caller of ``wait()``/``run()`` through the bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..bus import Bus, ErrorEvent, QualityChanged, QualityFloor
from ..config import Config, stream_configs
from ..engine.core import Engine
from ..engine.select import build_engine
from ..errors import ConfigError, PipelineError, RvmLiveError
from ..io.files import check_output_files
from ..io.sinks.base import Sink
from ..io.sources.base import Source, create_source
from .capture import CaptureStage
from .inference import InferenceStage
from .render import RenderStage
from .session import Session, default_outputs

log = logging.getLogger(__name__)

POLL_S = 0.1


class Daemon:
    """Runs every stream of ``config`` (its ``[[streams]]`` table, or the one stream its flags describe).

    ``engine`` (built from ``config`` by default) is shared by all streams. ``source``/``sinks`` replace the
    configured source/outputs of the streams they name (by id; a plain value or list means the only stream)
    for tests and embedding."""

    def __init__(self, config: Config, *, engine: Engine | None = None,
                 source: Source | dict[str, Source] | None = None,
                 sinks: list[Sink] | dict[str, list[Sink]] | None = None) -> None:
        self.config = config
        specs = stream_configs(config)
        sources, sinks = _by_stream(source, specs, "source"), _by_stream(sinks, specs, "sinks")
        # made (not opened) before the model loads: a bad spec fails at once, and the engine depends on liveness
        multi = len(specs) > 1
        sources = {sid: sources.get(sid) or _for_stream(sid, multi, create_source, cfg.source, cfg)
                   for sid, cfg in specs}
        live = all(bool(s.live) for s in sources.values())
        suffix = len(specs) > 1
        # file outputs writable, none written twice, none a source: said before the model loads
        check_output_files((sid, cfg.source, default_outputs(cfg, f"-{sid}" if suffix else ""))
                           for sid, cfg in specs if sid not in sinks)
        self.engine = engine if engine is not None else build_engine(config, live=live)
        self.bus = Bus()
        self.stop_event = threading.Event()
        self.failed = threading.Event()  # a stage failed: outputs close without publishing (files stay .part)
        self.doorbell = threading.Event()
        self.sessions = [
            _for_stream(stream_id, multi, Session, stream_id, cfg, state=self.engine.new_state(cfg.downsample),
                        device=self.engine.device, dtype=self.engine.dtype, stop=self.stop_event, failed=self.failed,
                        bus=self.bus, source=sources[stream_id], sinks=sinks.get(stream_id),
                        output_suffix=f"-{stream_id}" if suffix else "")
            for stream_id, cfg in specs]
        self._by_id = {s.id: s for s in self.sessions}
        self.bus.subscribe(QualityChanged, self._log_quality)
        self.bus.subscribe(QualityFloor, self._log_floor)
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.inference: InferenceStage | None = None
        self.renderer = RenderStage(self.stop_event)  # renders while the inference thread runs the next frames

    # ----- lifecycle ---------------------------------------------------------------------------------
    def open_source(self) -> None:
        """Open every stream's source in the caller's thread, so a bad camera or file fails before anything
        starts."""
        chunk_auto = 4 if self.engine.device.type == "cuda" else 1
        for session in self.sessions:
            if not session.workers:
                # along time only where one network call takes a whole chunk: torch's exact network
                chunking = self.engine.runtime == "torch" and self.engine.fullres == "exact" and len(self.sessions) == 1
                _for_stream(session.id, len(self.sessions) > 1, session.open_source, chunk_auto=chunk_auto,
                            chunking=chunking)

    def start(self) -> Daemon:
        """Open the sources and start the threads."""
        self.open_source()
        multi = len(self.sessions) > 1
        for session in self.sessions:
            session.stats_data.start()
            stage = CaptureStage(session, stop=self.stop_event, bus=self.bus, doorbell=self.doorbell)
            self._spawn(f"rvm-capture-{session.id}" if multi else "rvm-capture", stage.run, session.id)
        self.inference = InferenceStage(self.sessions, self.engine, stop=self.stop_event, bus=self.bus,
                                        doorbell=self.doorbell, renderer=self.renderer.start())
        self._spawn("rvm-inference", self.inference.run, None)
        for session in self.sessions:
            for i, worker in enumerate(session.workers):
                self._spawn(f"rvm-sink-{session.id}-{i}" if multi else f"rvm-sink-{i}", worker.run, session.id)
        return self

    def _spawn(self, name: str, target: Callable[[], None], stream_id: str | None) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the bus
                log.debug("%s failed", name, exc_info=True)
                self.bus.post(ErrorEvent(stream_id, name, exc))
                self.stop_event.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _log_quality(self, event: QualityChanged) -> None:
        where = self.session(event.stream_id).log_prefix if event.stream_id is not None else ""
        log.info("%squality: downsample %.3g -> %.3g (%s)", where, event.previous, event.ratio, event.reason)

    def _log_floor(self, event: QualityFloor) -> None:
        where = self.session(event.stream_id).log_prefix if event.stream_id is not None else ""
        if event.overloaded:
            log.warning("%squality: at the floor (downsample %.3g) a frame takes %.0f ms > %.0f ms; dropping frames "
                        "to keep up rather than lose the matte", where, event.ratio, event.step_ms, event.limit_ms)
        else:
            log.info("%squality: the floor holds the frame rate again (%.0f ms per frame)", where, event.step_ms)

    def stop(self) -> None:
        """Ask every stage to stop (idempotent, safe from signal handlers and other threads)."""
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the threads to finish (True) or ``timeout`` to pass (False); re-raise a stage's failure
        as ``PipelineError`` with the original as its cause."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive():
                self._raise_stage_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                thread.join(POLL_S if remaining is None else min(POLL_S, remaining))
        self._raise_stage_error()
        return True

    def _raise_stage_error(self) -> None:
        event = self.bus.next_error()
        if event is None:
            return
        self.stop_event.set()
        for thread in self._threads:
            thread.join(2.0)
        exc = event.error
        where = f"stream {event.stream_id}: " if event.stream_id is not None and len(self.sessions) > 1 else ""
        if isinstance(exc, RvmLiveError):  # an expected failure: its message says it all
            raise PipelineError(f"{where}{exc}", stream_id=event.stream_id) from exc
        # a bug or a driver failure: the whole story at debug level, one line for the user
        log.debug("%s failed", event.stage, exc_info=(type(exc), exc, exc.__traceback__))
        raise PipelineError(f"{where}{event.stage}: {type(exc).__name__}: {exc}", stream_id=event.stream_id) from exc

    def run(self) -> dict[str, Any]:
        """Start, wait for the end (or ``stop()``), close; returns the stats."""
        self.start()
        try:
            self.wait()
        finally:
            self.close()
        return self.stats()

    def close(self) -> None:
        """Stop and join every thread, closing sources, sinks and backgrounds (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        for thread in self._threads:
            thread.join(5.0)
        self.renderer.close()
        stuck = [t.name for t in self._threads if t.is_alive()] + (["rvm-render"] if self.renderer.alive else [])
        if stuck:
            # closing a container under a thread still inside it (a blocked network write) could crash
            # the process; the threads are daemons and end with it
            log.warning("threads still busy at shutdown: %s; leaving their resources to the OS", ", ".join(stuck))
            return
        for session in self.sessions:
            session.close()

    # ----- controller (control API and SIGHUP) -------------------------------------------------------
    def session(self, stream: str | None = None) -> Session:
        """The stream named ``stream``; ``None`` is the only stream (KeyError/ValueError otherwise)."""
        if stream is None:
            if len(self.sessions) != 1:
                raise ValueError(f"several streams run ({', '.join(self._by_id)}): name one")
            return self.sessions[0]
        try:
            return self._by_id[stream]
        except KeyError:
            raise KeyError(f"no such stream: {stream!r} (streams: {', '.join(self._by_id)})") from None

    def streams(self) -> list[dict[str, Any]]:
        """One line per stream: id, source, outputs and health."""
        return [{"id": s.id, "source": s.config.source, "outputs": [k.name for k in s.sinks], **s.health()}
                for s in self.sessions]

    def health(self, stream: str | None = None) -> dict[str, Any]:
        alive = all(t.is_alive() for t in self._threads) if self._threads else False
        ok = alive and not self.stop_event.is_set()
        if stream is not None or len(self.sessions) == 1:
            return {"ok": ok, **self.session(stream).health()}
        return {"ok": ok, "source_up": all(s.source_up for s in self.sessions),
                "paused": all(s.paused.is_set() for s in self.sessions), "streams": self.streams()}

    def _model_info(self) -> dict[str, Any]:
        return {"backbone": self.engine.backbone, "device": str(self.engine.device), "engine": self.engine.runtime,
                "fullres": self.engine.fullres}

    def stats(self, stream: str | None = None) -> dict[str, Any]:
        """The stats JSON: one stream's (the only one's by default), or, with several streams, totals plus
        ``streams: {id: stats}``."""
        if stream is not None or len(self.sessions) == 1:
            return self.session(stream).stats(**self._model_info())
        per = {s.id: s.stats(**self._model_info()) for s in self.sessions}
        total = {key: sum(p[key] for p in per.values()) for key in ("frames_in", "frames_out", "frames_dropped")}
        worst = {q: max((p["latency_ms"][q] for p in per.values() if p["latency_ms"][q] is not None), default=None)
                 for q in ("p50", "p95", "max")}
        batches = self.inference.batches if self.inference else 0
        return {**total, "fps_out": round(sum(p["fps_out"] for p in per.values()), 3), "latency_ms": worst,
                **self._model_info(), "streams": per, "batches": batches,
                "mean_batch": round(self.inference.batched_frames / batches, 3) if batches else None}

    def set_background(self, spec: str, stream: str | None = None) -> None:
        """Swap a stream's background; applied on its next frame. Bad specs raise ValueError/MediaError."""
        self.session(stream).set_background(spec)

    def pause(self, stream: str | None = None) -> None:
        """Stop matting a stream (or all); frames pass through unchanged until ``resume()``."""
        for session in self._targets(stream):
            session.pause()

    def resume(self, stream: str | None = None) -> None:
        """Matte again, from a fresh recurrent state."""
        for session in self._targets(stream):
            session.resume()

    def reset(self, stream: str | None = None) -> None:
        """Forget a stream's (or every stream's) recurrent state before its next frame."""
        for session in self._targets(stream):
            session.reset()

    def _targets(self, stream: str | None) -> list[Session]:
        return self.sessions if stream is None else [self.session(stream)]

    def apply_config(self, config: Config) -> list[str]:
        """Apply what can change while running (bg, mask_threshold, mirror, per stream); returns the fields
        that need a restart."""
        specs = dict(stream_configs(config))
        if set(specs) != set(self._by_id):
            raise ConfigError(f"streams changed ({', '.join(specs)} vs {', '.join(self._by_id)}): needs a restart")
        prepared: list[Any] = []
        try:  # every stream's new background first: one that fails leaves every stream as it was
            for session in self.sessions:
                prepared.append(_for_stream(session.id, len(self.sessions) > 1, session.prepare_config,
                                            specs[session.id]))
        except RvmLiveError:
            for background in prepared:
                if background is not None:
                    background.close()
            raise
        ignored: list[str] = []
        for session, background in zip(self.sessions, prepared):
            for name in session.apply_config(specs[session.id], background):
                if name not in ignored:
                    ignored.append(name)
        self.config = config
        return ignored


def _by_stream(value: Any, specs: list[tuple[str, Config]], what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        unknown = set(value) - {stream_id for stream_id, _ in specs}
        if unknown:
            raise ValueError(f"{what}= names unknown streams: {', '.join(sorted(unknown))}")
        return value
    if len(specs) > 1:
        raise ValueError(f"{what}= for several streams must be a dict keyed by stream id")
    return {specs[0][0]: value}


def _for_stream(stream_id: str, multi: bool, step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``step(*args, **kwargs)``; with several streams, an expected error names the stream it came from (a bad
    background, a missing source, a UDP port in use), keeping its type."""
    try:
        return step(*args, **kwargs)
    except RvmLiveError as exc:
        if not multi or isinstance(exc, PipelineError) or str(exc).startswith(f"stream {stream_id}: "):
            raise
        raise type(exc)(f"stream {stream_id}: {exc}") from exc
