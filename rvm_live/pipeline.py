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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .compositing import Background, check_background, composite, parse_background
from .config import Config, check_internal_size
from .errors import (
    ConfigError,
    MediaError,
    PipelineError,
    RvmLiveError,
    SourceError,
    SourceNotReady,
)
from .frame import END, EndOfStream, Frame
from .matting import Matter, pick_engine, resolve_device
from .queues import Empty, FrameQueue
from .sink_worker import SinkWorker, backoff_delays
from .sinks.base import Sink, create_sink
from .sources.base import Source, create_source
from .stats import Stats

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting loop looks at the stop event
LIVE_OUTPUT_WAIT_S = 1.0  # how long a file job waits on a stuck live output before dropping a frame for it
DEFAULT_FPS = 30.0


def default_outputs(config: Config) -> tuple[str, ...]:
    """Cameras go to the virtual camera; anything else to ``<name>-matted.mp4`` in the working directory."""
    if config.outputs:
        return config.outputs
    if config.source.startswith(("camera", "/dev/video")):
        return ("vcam",)
    stem = "demo" if config.source == "demo" else config.source.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (f"{stem or 'rvm-live'}-matted.mp4",)


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
        try:
            check_background(config.bg)  # a typo fails now, before a model is loaded or downloaded
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if matter is None:
            engine = pick_engine(config.engine, backbone=config.backbone, weights=config.weights,
                                 device=resolve_device(config.device))
            matter = Matter(config.backbone, weights=config.weights, device=config.device, fp16=config.fp16,
                            downsample_ratio=config.downsample, engine=engine, compile=config.compile,
                            offline=config.offline or None)
            log.info("inference: %s on %s (%s engine)", config.backbone, matter.device, matter.engine)
        self.matter = matter
        self._background: Background | None = None  # built once the source is open (its kind matters)
        self.background_spec = config.bg
        self._pending_background: Background | None = None
        self._bg_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.failed = threading.Event()  # a stage failed: outputs close without publishing (files stay .part)
        self._errors: queue.Queue[tuple[str, BaseException]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._reset_requested = threading.Event()
        self.paused = threading.Event()
        self.threshold = config.mask_threshold
        self.mirror = config.mirror
        self.stats_data = Stats()
        self.fps: float = DEFAULT_FPS
        self.source_up = False
        self.live = True  # until the source is open: the cautious choice for a background video
        self._reconnects = False
        self._closed = False
        self.chunk = 1
        self.capture_queue: FrameQueue = FrameQueue(config.queue_size, leaky=False, name="capture")
        self.workers: list[SinkWorker] = []

    # ----- setup -------------------------------------------------------------------------------------
    def _load_background(self, spec: str) -> Background:
        # a live pipeline never waits on a background video's decoder; a file job gets every frame of it
        try:
            return parse_background(spec, device=self.matter.device, dtype=self.matter.dtype, live=self.live,
                                    fallback=self.config.bg_fallback, max_megapixels=self.config.bg_max_megapixels)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def open_source(self) -> None:
        """Open the source in the caller's thread, so a bad camera or file fails before anything starts."""
        cancel_on = getattr(self.source, "cancel_on", None)
        if cancel_on is not None:  # a source waiting for a peer gives up waiting when we stop
            cancel_on(self.stop_event)
        try:
            self.source.open()
        except SourceNotReady as exc:  # a network stream not up yet: wait for it, like after a loss
            log.warning("%s; waiting for it", exc)
            self.stats_data.outage_started()
        else:
            size = getattr(self.source, "size", None)
            if size and all(size):  # the ratio's floor depends on the frame size, known only now
                check_internal_size(self.config.downsample, *size)
            self.source_up = True
        self.fps = float(self.source.fps or self.config.fps or DEFAULT_FPS)
        # cameras and network streams come back after an outage; a file played --realtime just ends
        self._reconnects = bool(getattr(self.source, "reconnect", self.source.live))
        if self._background is None:
            self._background = self._load_background(self.config.bg)
        self.live = live = bool(self.source.live)
        # file jobs may matte several frames per network call along time ([1,T,...]): more throughput on a
        # GPU (on the CPUs measured it was slower, see BENCHMARKS.md); live sources always go frame by frame
        auto = 4 if self.matter.device.type == "cuda" else 1
        self.chunk = 1 if live or self.matter.engine != "torch" else (self.config.chunk or auto)
        self.capture_queue = FrameQueue(max(self.config.queue_size, self.chunk), leaky=live, name="capture")
        # Live sources: every queue leaks, so latency never builds up. Files: every queue blocks, so no frame
        # is lost; a live output then sets the pace (it plays the file at its own rate), and one that is
        # down drains its queue while it backs off, so it holds nothing up.
        self.workers = [
            SinkWorker(s, self.config.queue_size, leaky=live, fps=self.fps, live_source=live,
                       no_signal_timeout=self.config.no_signal_timeout, stats=self.stats_data, stop=self.stop_event,
                       source_up=lambda: self.source_up, failed=self.failed.is_set,
                       publish_on_stop=self._reconnects or self.config.loop)
            for s in self.sinks]

    def start(self) -> Pipeline:
        """Open the source and start the worker threads."""
        if not self.workers:
            self.open_source()
        self.stats_data.start()
        self._spawn("rvm-capture", self._capture_loop)
        self._spawn("rvm-inference", self._inference_loop)
        for i, worker in enumerate(self.workers):
            self._spawn(f"rvm-sink-{i}", worker.run)
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
                    if not self._reconnects:
                        raise
                    if not self._reconnect_source(exc):
                        break
                    generation += 1
                    continue
                if image is None:
                    if self._reconnects and self._reconnect_source(SourceError(f"{self.source.name}: stream ended")):
                        generation += 1
                        continue
                    break
                frame = Frame(index, time.monotonic_ns(), f"{self.source.name}#{generation}", image)
                self.stats_data.frame_in()
                while not self.capture_queue.put(frame, timeout=POLL_S):
                    if self.stop_event.is_set():
                        return
                index += 1
        except BaseException:
            self.failed.set()
            raise
        finally:
            self.capture_queue.put(END, force=True)
            self.source.close()

    def _reconnect_source(self, cause: Exception) -> bool:
        """Reopen a lost live source with backoff; one log line per outage. False when stopping."""
        if self.source_up:  # (not up yet at start: "waiting" was said already)
            log.warning("source lost: %s; retrying with backoff", cause)
            self.stats_data.outage_started()
        self.source_up = False
        self.source.close()
        for delay in getattr(self.source, "retry_delays", backoff_delays)():
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
        pending: Frame | EndOfStream | None = None  # taken from the queue but not part of the last chunk
        try:
            while True:
                if pending is not None:
                    item, pending = pending, None
                else:
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
                batch, pending = self._gather(item)
                outputs = self.process_chunk(batch) if len(batch) > 1 else [self.process(item)]
                for out in outputs:
                    self.stats_data.frame_out()
                    for worker in self.workers:
                        if not self._hand_over(worker, out):
                            return
        except BaseException:
            self.failed.set()  # before END reaches the outputs: they must not publish a truncated file
            raise
        finally:
            for worker in self.workers:
                worker.queue.put(END, force=True)
            self._close_backgrounds()

    def _gather(self, first: Frame) -> tuple[list[Frame], Frame | EndOfStream | None]:
        """``first`` plus the frames already waiting, up to ``chunk``, of the same source and size; returns
        the batch and the item that ended it (to be handled next), if any."""
        batch = [first]
        while len(batch) < self.chunk and not self.paused.is_set():
            try:
                nxt = self.capture_queue.get(timeout=0)
            except Empty:
                break
            if nxt is END or nxt.source_id != first.source_id or nxt.image.shape != first.image.shape:
                return batch, nxt
            batch.append(nxt)
        return batch, None

    def _hand_over(self, worker: SinkWorker, frame: Frame) -> bool:
        """Queue ``frame`` for one output; False when stopping. A file output waits as long as it takes (no
        frame lost); a live output that has not taken a frame for ``LIVE_OUTPUT_WAIT_S`` (stuck writing or
        connecting) loses this one instead of holding up inference and every other output."""
        deadline = time.monotonic() + LIVE_OUTPUT_WAIT_S if worker.sink.live else None
        while not worker.queue.put(frame, timeout=POLL_S):
            if self.stop_event.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                worker.count_lost()
                return True
        return True

    def _current_background(self) -> Background:
        with self._bg_lock:
            if self._pending_background is not None:
                self._background.close()
                self._background, self._pending_background = self._pending_background, None
            return self._background

    def process(self, frame: Frame) -> Frame:
        """Matte and composite one frame on the inference device; returns the output frame."""
        image = np.ascontiguousarray(frame.image[:, ::-1] if self.mirror else frame.image)
        background = self._current_background()
        if self.paused.is_set():  # unmatted, but the same layout and channels, so outputs keep their size
            alpha = np.full(image.shape[:2], 255, np.uint8)
            out = np.dstack([image, alpha]) if background.transparent else image
            return self._finish(frame, image, out, alpha)
        with torch.inference_mode():
            # step(), not upload()+infer(): on CUDA it replays the captured graph
            fgr, pha = self.matter.step(image)
            return self._composite(frame, image, fgr, pha, self.matter.last_src, background)

    def process_chunk(self, frames: list[Frame]) -> list[Frame]:
        """Matte several consecutive frames in one network call along time; the outputs, in order."""
        images = [np.ascontiguousarray(f.image[:, ::-1] if self.mirror else f.image) for f in frames]
        background = self._current_background()
        with torch.inference_mode():
            fgr, pha = self.matter.step_chunk(np.stack(images))
            src = self.matter.last_src
            return [self._composite(f, img, fgr[t:t + 1], pha[t:t + 1], src[t:t + 1], background)
                    for t, (f, img) in enumerate(zip(frames, images))]

    def _composite(self, frame: Frame, image: np.ndarray, fgr: torch.Tensor, pha: torch.Tensor,
                   src: torch.Tensor, background: Background) -> Frame:
        result = composite(fgr, pha, background, src, threshold=self.threshold)
        return self._finish(frame, image, result.image.cpu().numpy(), result.alpha.cpu().numpy())

    def _finish(self, frame: Frame, image: np.ndarray, out: np.ndarray, alpha: np.ndarray) -> Frame:
        if self.config.side_by_side:
            original = image
            if out.shape[2] == 4:
                original = np.dstack([original, np.full(original.shape[:2], 255, np.uint8)])
            out = np.hstack([original, out])
        return frame.with_image(out, alpha)

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
        # a bug or a driver failure: the whole story at debug level, one line for the user
        log.debug("%s failed", name, exc_info=(type(exc), exc, exc.__traceback__))
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
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            # closing a container under a thread still inside it (a blocked network write) could crash
            # the process; the threads are daemons and end with it
            log.warning("threads still busy at shutdown: %s; leaving their resources to the OS", ", ".join(stuck))
            return
        self.source.close()
        for sink in self.sinks:
            sink.close()
        self._close_backgrounds()  # the inference thread closes them too, but may never have run

    def _close_backgrounds(self) -> None:
        with self._bg_lock:
            for background in (self._background, self._pending_background):
                if background is not None:
                    background.close()

    # ----- controller API (used by the control server and SIGHUP) -----------------------------------
    def health(self) -> dict[str, Any]:
        alive = all(t.is_alive() for t in self._threads) if self._threads else False
        source = "up" if self.source_up else "waiting" if self._reconnects else "down"
        return {"ok": alive and not self.stop_event.is_set(), "source_up": self.source_up, "source": source,
                "paused": self.paused.is_set(), "background_error": self._background_error()}

    def _background_error(self) -> str | None:
        background = self._background
        return background.failure if background is not None else None

    def stats(self) -> dict[str, Any]:
        """The stats JSON: counts, fps, capture→sink latency, model settings, per-sink and outages."""
        dropped = self.capture_queue.dropped + sum(w.queue.dropped + w.lost for w in self.workers)
        return self.stats_data.snapshot(
            frames_dropped=dropped, backbone=self.matter.backbone, device=str(self.matter.device),
            downsample_ratio=self.matter.ratio, sinks={w.sink.name: w.info() for w in self.workers},
            source_up=self.source_up, paused=self.paused.is_set(), background=self.background_spec,
            background_error=self._background_error())

    def set_background(self, spec: str) -> None:
        """Swap the background; applied on the next frame. Bad specs raise ValueError/MediaError."""
        check_background(spec)
        new = self._load_background(spec)
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
