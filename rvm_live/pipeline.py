"""The daemon's pipeline: capture → inference → sink threads, joined only by bounded queues.

One stop event, one error bus (worker exceptions reach the thread that called ``run()``/``wait()``), one
owner of the recurrent state (the inference stage's ``Matter``). Live sources and sinks survive outages:
sources are reopened with capped exponential backoff, live sinks reconnect the same way, and a virtual
camera keeps showing the last frame, then a "no signal" card, while the source is away.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .compositing import Background, check_background, composite, parse_background
from .config import Config
from .errors import (
    ConfigError,
    MediaError,
    PipelineError,
    RvmLiveError,
    SinkError,
    SourceError,
    VirtualCameraError,
)
from .frame import END, Frame
from .matting import Matter
from .queues import Empty, FrameQueue
from .sinks.base import Sink, create_sink
from .sources.base import Source, create_source
from .stats import Stats, no_signal_card

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting loop looks at the stop event
BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0
DEFAULT_FPS = 30.0


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S):
    """0.25, 0.5, 1, 2, 4, 5, 5, ... seconds."""
    delay = start
    while True:
        yield delay
        delay = min(delay * 2, cap)


def default_outputs(config: Config) -> tuple[str, ...]:
    """Cameras go to the virtual camera; anything else to ``<name>-matted.mp4`` in the working directory."""
    if config.outputs:
        return config.outputs
    if config.source.startswith(("camera", "/dev/video")):
        return ("vcam",)
    stem = "demo" if config.source == "demo" else config.source.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (f"{stem or 'rvm-live'}-matted.mp4",)


class SinkWorker:
    """One sink, its own queue and thread: a slow or broken sink never stalls inference or other sinks."""

    def __init__(self, sink: Sink, queue_size: int, leaky: bool) -> None:
        self.sink = sink
        self.queue: FrameQueue = FrameQueue(queue_size, leaky=leaky, name=f"sink:{sink.name}")
        self.frames = 0
        self.reconnects = 0
        self.is_open = False
        self.last_frame: Frame | None = None
        self.last_real_ns = 0
        self.retry_at = 0.0  # monotonic time before which a lost sink is not retried
        self.backoff: Iterator[float] | None = None

    def info(self) -> dict[str, Any]:
        return {"frames": self.frames, "dropped": self.queue.dropped, "reconnects": self.reconnects,
                "connected": self.is_open}


class Pipeline:
    """Runs one matting job or daemon. Also the control API's controller (``health``, ``stats``,
    ``set_background``, ``pause``, ``resume``, ``reset``)."""

    def __init__(self, config: Config, *, matter: Matter | None = None, source: Source | None = None,
                 sinks: list[Sink] | None = None) -> None:
        self.config = config
        self.source = source if source is not None else create_source(config.source, config)
        self.sinks = sinks if sinks is not None else [create_sink(s, config) for s in default_outputs(config)]
        if not self.sinks:
            raise ConfigError("no outputs")
        self.matter = matter if matter is not None else Matter(
            config.backbone, weights=config.weights, device=config.device, fp16=config.fp16,
            downsample_ratio=config.downsample)
        self._background = self._load_background(config.bg)
        self.background_spec = config.bg
        self._pending_background: Background | None = None
        self._bg_lock = threading.Lock()
        self.stop_event = threading.Event()
        self._errors: queue.Queue[tuple[str, BaseException]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._reset_requested = threading.Event()
        self.paused = threading.Event()
        self.threshold = config.mask_threshold
        self.mirror = config.mirror
        self.stats_data = Stats()
        self.fps: float = DEFAULT_FPS
        self.source_up = False
        self._closed = False
        self.capture_queue: FrameQueue = FrameQueue(config.queue_size, leaky=False, name="capture")
        self.workers: list[SinkWorker] = []

    # ----- setup -------------------------------------------------------------------------------------
    def _load_background(self, spec: str) -> Background:
        try:
            return parse_background(spec, device=self.matter.device, dtype=self.matter.dtype)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def open_source(self) -> None:
        """Open the source in the caller's thread, so a bad camera or file fails before anything starts."""
        self.source.open()
        self.source_up = True
        self.fps = float(self.source.fps or self.config.fps or DEFAULT_FPS)
        live = bool(self.source.live)
        self.capture_queue = FrameQueue(self.config.queue_size, leaky=live, name="capture")
        # Live sources: every queue leaks, so latency never builds up. Files: file outputs block (no frame
        # lost) while live outputs still leak, so a stalled stream never holds up the file.
        self.workers = [SinkWorker(s, self.config.queue_size, leaky=live or s.live) for s in self.sinks]

    def start(self) -> Pipeline:
        """Open the source and start the worker threads."""
        if not self.source_up:
            self.open_source()
        self.stats_data.start()
        self._spawn("rvm-capture", self._capture_loop)
        self._spawn("rvm-inference", self._inference_loop)
        for i, worker in enumerate(self.workers):
            self._spawn(f"rvm-sink-{i}", self._sink_loop, worker)
        return self

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the error bus
                log.debug("%s failed", name, exc_info=True)
                self._errors.put((name, exc))
                self.stop_event.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ----- capture -----------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        index, generation = 0, 0
        limit = self.config.max_frames
        try:
            while not self.stop_event.is_set():
                if limit is not None and index >= limit:
                    break
                try:
                    image = self.source.read()
                except SourceError as exc:
                    if not self.source.live:
                        raise
                    if not self._reconnect_source(exc):
                        break
                    generation += 1
                    continue
                if image is None:
                    if self.source.live and self._reconnect_source(SourceError(f"{self.source.name}: stream ended")):
                        generation += 1
                        continue
                    break
                frame = Frame(index, time.monotonic_ns(), f"{self.source.name}#{generation}", image)
                self.stats_data.frame_in()
                while not self.capture_queue.put(frame, timeout=POLL_S):
                    if self.stop_event.is_set():
                        return
                index += 1
        finally:
            self.capture_queue.put(END, force=True)
            self.source.close()

    def _reconnect_source(self, cause: Exception) -> bool:
        """Reopen a lost live source with backoff; one log line per outage. False when stopping."""
        log.warning("source lost: %s; retrying with backoff", cause)
        self.source_up = False
        self.stats_data.outage_started()
        self.source.close()
        for delay in backoff_delays():
            if self.stop_event.wait(delay):
                return False
            try:
                self.source.open()
            except SourceError as exc:
                log.debug("reconnect failed: %s", exc)
                continue
            self.source_up = True
            seconds = self.stats_data.outage_ended()
            log.warning("source back after %.1f s", seconds)
            return True
        return False  # pragma: no cover - the generator never ends

    # ----- inference ---------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        last_source: str | None = None
        try:
            while True:
                try:
                    item = self.capture_queue.get(timeout=POLL_S)
                except Empty:
                    if self.stop_event.is_set():
                        return
                    continue
                if item is END or self.stop_event.is_set():
                    return
                if item.source_id != last_source or self._reset_requested.is_set():
                    self._reset_requested.clear()
                    self.matter.reset()
                    last_source = item.source_id
                out = self.process(item)
                self.stats_data.frame_out()
                for worker in self.workers:
                    while not worker.queue.put(out, timeout=POLL_S):
                        if self.stop_event.is_set():
                            return
        finally:
            for worker in self.workers:
                worker.queue.put(END, force=True)
            with self._bg_lock:
                self._background.close()
                if self._pending_background is not None:
                    self._pending_background.close()

    def process(self, frame: Frame) -> Frame:
        """Matte and composite one frame on the inference device; returns the output frame."""
        image = frame.image[:, ::-1] if self.mirror else frame.image
        if self.paused.is_set():
            return frame.with_image(np.ascontiguousarray(image))
        with self._bg_lock:
            if self._pending_background is not None:
                self._background.close()
                self._background, self._pending_background = self._pending_background, None
            background = self._background
        with torch.inference_mode():
            src = self.matter.upload(np.ascontiguousarray(image))
            fgr, pha = self.matter.infer(src)
            result = composite(fgr, pha, background, src, threshold=self.threshold)
            out = result.image.cpu().numpy()
            alpha = result.alpha.cpu().numpy()
        if self.config.side_by_side:
            original = np.ascontiguousarray(image)
            if out.shape[2] == 4:
                original = np.dstack([original, np.full(original.shape[:2], 255, np.uint8)])
            out = np.hstack([original, out])
        return frame.with_image(out, alpha)

    # ----- sinks -------------------------------------------------------------------------------------
    def _sink_loop(self, worker: SinkWorker) -> None:
        sink = worker.sink
        period = 1.0 / self.fps
        next_slot = 0.0
        try:
            while True:
                keepalive = sink.live and self.source.live and worker.is_open
                try:
                    item = worker.queue.get(timeout=period if keepalive else POLL_S)
                except Empty:
                    if self.stop_event.is_set():
                        return
                    if keepalive:
                        self._keep_alive(worker)
                    continue
                if item is END or self.stop_event.is_set():
                    return
                if sink.live and not self.source.live:
                    # a file pushed to a live output plays at the file's rate, not as fast as we can go
                    now = time.monotonic()
                    if next_slot > now and self.stop_event.wait(next_slot - now):
                        return
                    next_slot = max(now, next_slot) + period
                worker.last_real_ns = time.monotonic_ns()
                self._deliver(worker, item)
        finally:
            worker.is_open = False
            sink.close()

    def _deliver(self, worker: SinkWorker, frame: Frame, *, real: bool = True) -> None:
        sink = worker.sink
        if not worker.is_open and not self._open_sink(worker, frame):
            return
        if real:
            self.stats_data.latency(frame.age_ms())
        try:
            sink.write(frame)
        except SinkError as exc:
            worker.is_open = False
            if not sink.live:
                raise
            log.warning("output %s lost: %s; reconnecting with backoff", sink.name, exc)
            worker.reconnects += 1
            worker.retry_at = time.monotonic()
            worker.backoff = backoff_delays()
            return
        worker.last_frame = frame
        worker.frames += 1

    def _open_sink(self, worker: SinkWorker, frame: Frame) -> bool:
        sink = worker.sink
        if time.monotonic() < worker.retry_at:
            return False  # still backing off: drop this frame, the sink's queue keeps draining
        try:
            sink.open(frame.width, frame.height, self.fps)
        except SinkError as exc:
            # a missing virtual camera is a setup problem to report now; a stream server may come later
            if not sink.live or isinstance(exc, VirtualCameraError):
                raise
            if worker.backoff is None:
                log.warning("output %s unavailable: %s; retrying with backoff", sink.name, exc)
            worker.backoff = worker.backoff or backoff_delays()
            delay = next(worker.backoff)
            worker.retry_at = time.monotonic() + delay
            log.debug("output %s: reconnect failed (%s); next try in %.2f s", sink.name, exc, delay)
            return False
        if worker.reconnects:
            log.warning("output %s reconnected", sink.name)
        worker.is_open = True
        worker.backoff = None
        return True

    def _keep_alive(self, worker: SinkWorker) -> None:
        """A live sink with no new frame: repeat the last one, then show "no signal" after a timeout."""
        last = worker.last_frame
        if last is None:
            return
        silent_s = (time.monotonic_ns() - worker.last_real_ns) / 1e9
        if silent_s >= self.config.no_signal_timeout:
            card = no_signal_card(last.height, last.width, channels=last.image.shape[2])
            last = last.with_image(card)
        frame = Frame(last.index, time.monotonic_ns(), last.source_id, last.image, last.alpha)
        self._deliver(worker, frame, real=False)

    # ----- lifecycle ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask every stage to stop (idempotent, safe from signal handlers and other threads)."""
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the threads to finish (True) or ``timeout`` to pass (False); re-raise a worker's
        failure as ``PipelineError`` with the original as its cause."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive():
                self._raise_worker_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                thread.join(POLL_S if remaining is None else min(POLL_S, remaining))
        self._raise_worker_error()
        return True

    def _raise_worker_error(self) -> None:
        try:
            name, exc = self._errors.get_nowait()
        except queue.Empty:
            return
        self.stop_event.set()
        for thread in self._threads:
            thread.join(2.0)
        if isinstance(exc, RvmLiveError):  # an expected failure: its message says it all
            raise PipelineError(str(exc)) from exc
        # a bug or a driver failure: keep the whole story in the log
        log.error("%s failed", name, exc_info=(type(exc), exc, exc.__traceback__))
        raise PipelineError(f"{name}: {type(exc).__name__}: {exc}") from exc

    def run(self) -> dict[str, Any]:
        """Start, wait for the end (or ``stop()``), close; returns the stats."""
        self.start()
        try:
            self.wait()
        finally:
            self.close()
        return self.stats()

    def close(self) -> None:
        """Stop and join every thread, closing source and sinks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.stop_event.set()
        for thread in self._threads:
            thread.join(5.0)
        self.source.close()
        for sink in self.sinks:
            sink.close()

    # ----- controller API (used by the control server and SIGHUP) -----------------------------------
    def health(self) -> dict[str, Any]:
        alive = all(t.is_alive() for t in self._threads) if self._threads else False
        return {"ok": alive and not self.stop_event.is_set(), "source_up": self.source_up,
                "paused": self.paused.is_set()}

    def stats(self) -> dict[str, Any]:
        """The stats JSON: counts, fps, capture→sink latency, model settings, per-sink and outages."""
        dropped = self.capture_queue.dropped + sum(w.queue.dropped for w in self.workers)
        return self.stats_data.snapshot(
            frames_dropped=dropped, backbone=self.matter.backbone, device=str(self.matter.device),
            downsample_ratio=self.matter.ratio, sinks={w.sink.name: w.info() for w in self.workers},
            source_up=self.source_up, paused=self.paused.is_set(), background=self.background_spec)

    def set_background(self, spec: str) -> None:
        """Swap the background; applied on the next frame. Bad specs raise ValueError/MediaError."""
        check_background(spec)
        new = parse_background(spec, device=self.matter.device, dtype=self.matter.dtype)
        with self._bg_lock:
            if self._pending_background is not None:
                self._pending_background.close()
            self._pending_background = new
            self.background_spec = spec
        log.info("background -> %s", spec)

    def pause(self) -> None:
        """Stop matting; frames pass through unchanged until ``resume()``."""
        self.paused.set()

    def resume(self) -> None:
        """Matte again, from a fresh recurrent state."""
        self._reset_requested.set()
        self.paused.clear()

    def reset(self) -> None:
        """Forget the recurrent state before the next frame."""
        self._reset_requested.set()

    def apply_config(self, config: Config) -> list[str]:
        """Apply what can change while running (bg, mask_threshold, mirror); returns fields needing a restart."""
        if config.bg != self.config.bg:
            try:
                self.set_background(config.bg)
            except (ValueError, MediaError) as exc:
                raise ConfigError(str(exc)) from None
        self.threshold, self.mirror = config.mask_threshold, config.mirror
        live = {"bg", "mask_threshold", "mirror"}
        ignored = [f for f in config.__dataclass_fields__ if f not in live
                   and getattr(config, f) != getattr(self.config, f)]
        self.config = self.config.replace(bg=config.bg, mask_threshold=config.mask_threshold, mirror=config.mirror)
        return ignored


def run_pipeline(config: Config, **kwargs: Any) -> dict[str, Any]:
    """Build, run and close a pipeline for ``config``; returns its stats."""
    return Pipeline(config, **kwargs).run()
