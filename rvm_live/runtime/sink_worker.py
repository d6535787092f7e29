"""The sink stage: one output, its own bounded queue and thread, so a slow or broken output never stalls
inference or the other outputs. Live outputs reconnect with backoff and, while a live source is away,
repeat the last frame and then show a "no signal" card so the device stays open and showing something."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..bus import Bus, Event, SinkBack, SinkLost, SourceBack, SourceLost
from ..errors import SinkError, VirtualCameraError
from ..frame import END, Frame
from ..io.backoff import backoff_delays
from ..io.sinks.base import Sink
from ..queues import Empty, FrameQueue
from .stats import Stats, no_signal_card

log = logging.getLogger(__name__)

POLL_S = 0.1
KEEPALIVE_PERIODS = 3
KEEPALIVE_MIN_S = 1.0
NO_FRAME_CARD_SIZE = (360, 640)  # (height, width) of the card shown before a live source's first frame


class SinkWorker:
    """Drives one sink from its queue until end of stream or ``stop``; ``run()`` is the thread body."""

    def __init__(self, sink: Sink, queue_size: int, *, leaky: bool, fps: float, live_source: bool,
                 no_signal_timeout: float, stats: Stats, stop: threading.Event,
                 source_up: bool = True, failed: threading.Event | None = None,
                 publish_on_stop: bool | None = None, bus: Bus | None = None, stream_id: str | None = None) -> None:
        self.sink = sink
        # SinkLost / SinkBack go on the daemon's bus, and the stream's SourceLost / SourceBack come from it
        self.bus, self.stream_id = bus, stream_id
        self.source_up = source_up
        if bus is not None:
            bus.subscribe(SourceLost, lambda e: self._source_event(e, False))
            bus.subscribe(SourceBack, lambda e: self._source_event(e, True))
        sink.cancel_on(stop)  # a sink that waits on a peer stops waiting when the pipeline stops
        self.queue: FrameQueue = FrameQueue(queue_size, leaky=leaky, name=f"sink:{sink.name}")
        self.period = 1.0 / fps
        # repeat the last frame only after a real silence: never because inference is slower than the source
        self.keepalive_s = max(KEEPALIVE_PERIODS * self.period, KEEPALIVE_MIN_S)
        self.fps = fps
        self.live_source = live_source
        # a recording of a camera or stream (or a looped file) ends when stopped; a file job stopped before
        # its file ended (even played --realtime) is unfinished
        self.publish_on_stop = live_source if publish_on_stop is None else publish_on_stop
        self.no_signal_timeout = no_signal_timeout
        self.stats = stats
        self.stop = stop
        self.failed = failed or threading.Event()  # set by a failing stage before END reaches this queue
        self.frames = 0
        self._lost = 0  # frames this output never sent: it was down, or stuck (see ``count_lost``)
        self._lost_lock = threading.Lock()
        self.reconnects = 0
        self.is_open = False
        self.last_frame: Frame | None = None
        self.last_real_ns = 0
        self.retry_at = 0.0  # monotonic time before which a lost output is not retried
        self.backoff: Iterator[float] | None = None
        self.failure: str | None = None  # why a recording of a live source was given up (the rest goes on)

    @property
    def lost(self) -> int:
        return self._lost

    def count_lost(self, n: int = 1) -> None:
        """Count frames this output never sent (called from this worker and from the inference thread)."""
        with self._lost_lock:
            self._lost += n

    def info(self) -> dict[str, Any]:
        """Per-output counters for the stats JSON."""
        return {"frames": self.frames, "dropped": self.queue.dropped + self.lost, "reconnects": self.reconnects,
                "connected": self.is_open, "failed": self.failure}

    def state(self) -> str:
        """One word (and why) for /health: up, down (a live output reconnecting) or failed: REASON."""
        if self.failure is not None:
            return f"failed: {self.failure}"
        return "up" if self.is_open or self.last_frame is None else "down"

    def run(self) -> None:
        next_slot = 0.0
        try:
            while True:
                # (before the first frame too: a live source that is not up yet still gets the card)
                keepalive = self.sink.live and self.live_source and (self.is_open or self.last_frame is None)
                try:
                    # a live output with nothing new for a few frame periods repeats its last frame (a device
                    # must keep receiving); a merely slow inference does not trigger it
                    item = self.queue.get(timeout=self.keepalive_s if keepalive else POLL_S)
                except Empty:
                    if self.stop.is_set():
                        return
                    if keepalive:
                        self._keep_alive()
                    continue
                # a file keeps every frame made before a stop or a failure (at most a queue's worth): its
                # .part then holds all of them; a live output just goes
                if item is END or (self.stop.is_set() and self.sink.live):
                    return
                if self.sink.live and not self.live_source:
                    # a file pushed to a live output plays at the file's rate, not as fast as we can go
                    now = time.monotonic()
                    if next_slot > now and self.stop.wait(next_slot - now):
                        return
                    next_slot = max(now, next_slot) + self.period
                self.last_real_ns = time.monotonic_ns()
                self._deliver(item)
        finally:
            self.is_open = False
            if self.failed.is_set():
                self.sink.abort()  # the run failed: a file keeps its partial output under its temporary name
            elif self.stop.is_set() and not self.publish_on_stop:
                self.sink.abort("stopped before the end of its source")  # a half-made file never replaces a whole
            else:
                self.sink.close()

    def _deliver(self, frame: Frame, *, real: bool = True) -> None:
        if frame.image.shape[2] == 4 and not self.sink.accepts_alpha:
            # the stream comes down as RGBA for another of its outputs: this one takes the RGB part
            frame = frame.with_image(np.ascontiguousarray(frame.image[..., :3]), frame.alpha)
        if self.failure is not None or (not self.is_open and not self._open(frame)):
            self.count_lost(real)
            return
        if real:
            self.stats.latency(frame.age_ms())
        try:
            self.sink.write(frame)
        except SinkError as exc:
            self.is_open = False
            if not self.sink.live:
                self._give_up(exc)
                self.count_lost(real)
                return
            self.count_lost(real)
            log.warning("output %s lost: %s; reconnecting with backoff", self.sink.name, exc)
            self._post(SinkLost(self.stream_id, self.sink.name, str(exc)))
            self.reconnects += 1
            self.retry_at, self.backoff = time.monotonic(), backoff_delays()
            return
        self.last_frame = frame
        self.frames += real

    def _open(self, frame: Frame) -> bool:
        if time.monotonic() < self.retry_at:
            return False  # still backing off: this frame is dropped, the queue keeps draining
        try:
            self.sink.open(frame.width, frame.height, self.fps)
        except SinkError as exc:
            # a missing virtual camera is a setup problem to report now; a stream server may come later
            if isinstance(exc, VirtualCameraError):
                raise
            if not self.sink.live:
                self._give_up(exc)
                return False
            if self.backoff is None:
                log.warning("output %s unavailable: %s; retrying with backoff", self.sink.name, exc)
            self.backoff = self.backoff or backoff_delays()
            delay = next(self.backoff)
            self.retry_at = time.monotonic() + delay
            log.debug("output %s: reconnect failed (%s); next try in %.2f s", self.sink.name, exc, delay)
            return False
        if self.reconnects:
            log.warning("output %s reconnected", self.sink.name)
            self._post(SinkBack(self.stream_id, self.sink.name))
        self.is_open, self.backoff = True, None
        return True

    def _give_up(self, exc: SinkError) -> None:
        """A file output failed (a full disk, a lost mount). A file job fails with it; a live daemon loses only
        this output, keeps what it wrote (the ``.part``) and keeps every other output running."""
        if not self.live_source:
            raise exc
        self.failure = str(exc)
        log.error("output %s failed: %s; the other outputs go on without it", self.sink.name, exc)
        abort = getattr(self.sink, "abort", None)
        if abort is not None:
            abort("it failed")
        self._post(SinkLost(self.stream_id, self.sink.name, self.failure))

    def _source_event(self, event: Event, up: bool) -> None:
        if event.stream_id == self.stream_id:
            self.source_up = up

    def _post(self, event: Event) -> None:
        if self.bus is not None:
            self.bus.post(event)

    def _keep_alive(self) -> None:
        """No new frame for a live output: repeat the last one, then the "no signal" card after a timeout."""
        last = self.last_frame
        if last is None:  # nothing from the source yet: the card, at a size the outputs can start with
            if self.source_up:
                return
            height, width = NO_FRAME_CARD_SIZE
            last = Frame(0, time.monotonic_ns(), "no-signal", no_signal_card(height, width))
        silent_s = (time.monotonic_ns() - self.last_real_ns) / 1e9
        if not self.source_up and silent_s >= self.no_signal_timeout:
            last = last.with_image(no_signal_card(last.height, last.width, channels=last.image.shape[2]))
        self._deliver(dataclasses.replace(last, capture_ns=time.monotonic_ns()), real=False)
