"""One stream in the daemon: its source, recurrent state, background, settings, outputs and stats.

A session owns no thread. The capture stage reads its source into ``capture_queue``; the shared inference
stage mattes its frames (batched with other sessions of the same size and ratio) against ``state``, and the
render stage renders them as ``plan()`` says and hands them to ``workers``, one sink thread each. Everything
the control API can change on a stream (background, pause, reset, threshold, mirror) lives here, behind this
object's methods. What other threads learn about the stream (source lost or back, quality changes, its end)
reaches it as events on the bus.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ..bus import Bus, EndOfStreamEvent, Event, QualityChanged, QualityFloor, SourceBack, SourceLost
from ..compositing.backgrounds import Background, check_background, opaque, parse_background
from ..config import Config, check_internal_size
from ..engine.render import Picture, RenderPlan
from ..engine.state import StreamState
from ..errors import ConfigError, MediaError, SourceNotReady
from ..frame import Frame
from ..io.sinks.base import Sink, create_sink
from ..io.sources.base import Source
from ..queues import FrameQueue
from .sink_worker import SinkWorker
from .stats import Stats

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
LIVE_SETTINGS = ("bg", "mask_threshold", "mirror")  # what SIGHUP / the control API change while running


def default_outputs(config: Config, suffix: str = "") -> tuple[str, ...]:
    """Cameras go to the virtual camera; anything else to ``<name>[-suffix]-matted.mp4`` in the working
    directory (``suffix`` keeps several streams' default files apart)."""
    if config.outputs:
        return config.outputs
    if config.source.startswith(("camera", "/dev/video")):
        return ("vcam",)
    stem = "demo" if config.source == "demo" else config.source.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (f"{stem or 'rvm-live'}{suffix}-matted.mp4",)


class Session:
    """A stream's parts and live settings. ``state`` is the engine's recurrent state for this stream."""

    def __init__(self, stream_id: str, config: Config, *, state: StreamState, device: Any, dtype: Any,
                 stop: threading.Event, failed: threading.Event, bus: Bus, source: Source,
                 sinks: list[Sink] | None = None, output_suffix: str = "") -> None:
        self.id = stream_id
        self.config = config
        self.state = state
        self.device, self.dtype = device, dtype
        self.stop, self.failed, self.bus = stop, failed, bus
        self.source = source
        self.sinks = sinks if sinks is not None else [create_sink(s, config)
                                                      for s in default_outputs(config, output_suffix)]
        if not self.sinks:
            raise ConfigError(f"stream {stream_id}: no outputs")
        if config.control and sinks is None:  # the web page's live preview taps the output (sinks/mjpeg.py)
            self.sinks.append(create_sink("preview", config))
        # RGB or RGBA, decided once: a transparent background comes down with its alpha only for outputs
        # that take it (a sink that does not is given the RGB part by its worker)
        self.alpha_out = any(sink.accepts_alpha for sink in self.sinks)
        try:
            check_background(config.bg)  # a typo fails now, before a model is loaded or downloaded
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.stats_data = Stats()
        self.threshold = config.mask_threshold
        self.mirror = config.mirror
        self.paused = threading.Event()
        self.reset_requested = threading.Event()
        self.background_spec = config.bg
        self._background: Background | None = None  # built once the source is open (its kind matters)
        self._pending_background: Background | None = None
        self._bg_lock = threading.Lock()
        self.fps = DEFAULT_FPS
        self.source_up = False
        self.live = True  # until the source is open: the cautious choice for a background video
        self.reconnects = False
        self.chunk = 1
        self.ended = False  # every frame of this stream has reached its outputs' queues
        self.quality_changes = 0
        self.floor_overloaded = False  # at the quality floor and still too slow: dropping frames
        bus.subscribe(Event, self._on_event)
        self.capture_queue: FrameQueue = FrameQueue(config.queue_size, leaky=False, name=f"capture:{stream_id}")
        self.workers: list[SinkWorker] = []

    # ----- setup -------------------------------------------------------------------------------------
    def open_source(self, *, chunk_auto: int = 1, chunking: bool = False) -> None:
        """Open the source in the caller's thread (a bad camera or file fails before anything starts) and
        build the queues and sink workers its kind calls for."""
        self.source.cancel_on(self.stop)  # a source waiting for a peer gives up waiting when we stop
        try:
            self.source.open()
        except SourceNotReady as exc:  # a network stream not up yet: wait for it, like after a loss
            log.warning("%s%s; waiting for it", self.log_prefix, exc)
            self.stats_data.outage_started()
        else:
            size = self.source.size
            if size and all(size):  # the ratio's floor depends on the frame size, known only now
                check_internal_size(self.config.downsample, *size)
            self.source_up = True
        self.fps = float(self.source.fps or self.config.fps or DEFAULT_FPS)
        # cameras and network streams come back after an outage; a file played --realtime just ends
        self.reconnects = bool(self.source.reconnect)
        self.live = live = bool(self.source.live)
        if self._background is None:
            self._background = self._load_background(self.config.bg)
        # file jobs may matte several frames per network call along time; live sources go frame by frame
        self.chunk = 1 if live or not chunking else (self.config.chunk or chunk_auto)
        self.capture_queue = FrameQueue(max(self.config.queue_size, self.chunk), leaky=live, name=f"capture:{self.id}")
        # Live sources: every queue leaks, so latency never builds up. Files: every queue blocks, so no frame
        # is lost; a live output then sets the pace, and one that is down drains its queue while it backs off.
        self.workers = [
            SinkWorker(s, self.config.queue_size, leaky=live, fps=self.fps, live_source=live,
                       no_signal_timeout=self.config.no_signal_timeout, stats=self.stats_data, stop=self.stop,
                       source_up=self.source_up, failed=self.failed,
                       publish_on_stop=self.reconnects or self.config.loop, bus=self.bus, stream_id=self.id)
            for s in self.sinks]

    def _load_background(self, spec: str) -> Background:
        # a live stream never waits on a background video's decoder; a file job gets every frame of it
        try:
            return parse_background(spec, device=self.device, dtype=self.dtype, live=self.live,
                                    fallback=self.config.bg_fallback, max_megapixels=self.config.bg_max_megapixels)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # ----- per frame (inference thread) -------------------------------------------------------------
    def background(self) -> Background:
        """The background for the next frame (a pending swap takes effect here)."""
        with self._bg_lock:
            if self._pending_background is not None:
                self._background.close()
                self._background, self._pending_background = self._pending_background, None
            return self._background

    def input_image(self, frame: Frame) -> np.ndarray:
        """The picture the network sees: the captured one, mirrored when asked."""
        return np.ascontiguousarray(frame.image[:, ::-1] if self.mirror else frame.image)

    def plan(self) -> RenderPlan:
        """How this stream's next frame is rendered: its background, threshold, and RGB or RGBA."""
        return RenderPlan(self.background(), self.threshold, self.alpha_out)

    @property
    def governed(self) -> bool:
        """Whether the quality governor sets this stream's ratio (live, ``quality = "auto"``)."""
        return self.live and self.config.quality == "auto"

    def finish(self, frame: Frame, image: np.ndarray, picture: Picture) -> Frame:
        """The output frame: the rendered ``picture`` (side by side with the input when asked), carrying
        ``frame``'s timing."""
        out = picture.image
        if self.config.side_by_side:
            out = np.hstack([opaque(image, out.shape[2] == 4), out])
        return frame.with_image(out, picture.alpha)

    def passthrough(self, frame: Frame, image: np.ndarray) -> Frame:
        """A paused stream's frame: unmatted, but the same layout and channels, so outputs keep their size."""
        plan = self.plan()
        picture = Picture(opaque(image, plan.rgba and plan.background.transparent),
                          np.full(image.shape[:2], 255, np.uint8))
        return self.finish(frame, image, picture)

    def _on_event(self, event: Event) -> None:
        """This stream's news from other threads (the bus runs it on the poster's thread)."""
        if event.stream_id != self.id:
            return
        if isinstance(event, SourceLost):
            self.source_up = False
            self.stats_data.outage_started()
        elif isinstance(event, SourceBack):
            self.source_up = True
            self.stats_data.outage_ended()
        elif isinstance(event, QualityChanged):
            self.quality_changes += 1
        elif isinstance(event, QualityFloor):
            self.floor_overloaded = event.overloaded
        elif isinstance(event, EndOfStreamEvent):
            self.ended = True

    # ----- lifecycle ---------------------------------------------------------------------------------
    def close_backgrounds(self) -> None:
        with self._bg_lock:
            for background in (self._background, self._pending_background):
                if background is not None:
                    background.close()

    def close(self) -> None:
        """Close source, sinks and backgrounds (each close is idempotent)."""
        self.source.close()
        for sink in self.sinks:
            sink.close()
        self.close_backgrounds()

    # ----- controller (control API and SIGHUP) -------------------------------------------------------
    @property
    def log_prefix(self) -> str:
        """``"stream cam1: "`` when the daemon runs several streams; nothing for the usual single stream."""
        return f"stream {self.id}: " if self.id != "0" else ""

    def health(self) -> dict[str, Any]:
        source = "up" if self.source_up else "waiting" if self.reconnects else "down"
        return {"source_up": self.source_up, "source": source, "paused": self.paused.is_set(), "ended": self.ended,
                "background_error": self.background_error(), "outputs": {w.sink.name: w.state() for w in self.workers},
                "stale_frames": self.stale_frames()}

    def stale_frames(self) -> int:
        """Frames a live source dropped because they came too late (a backlog is never delivered)."""
        return int(getattr(self.source, "stale_frames", 0))  # only network sources keep this count

    def background_error(self) -> str | None:
        """Why the background video stopped (it then shows its last frame, then the fallback colour)."""
        background = self._background
        return background.failure if background is not None else None

    def dropped(self) -> int:
        return self.capture_queue.dropped + sum(w.queue.dropped + w.lost for w in self.workers)

    def stats(self, **model: Any) -> dict[str, Any]:
        """This stream's stats JSON: counts, fps, capture→sink latency, per-sink counters, outages."""
        return self.stats_data.snapshot(
            frames_dropped=self.dropped(), **model, downsample_ratio=self.state.ratio,
            quality="auto" if self.governed else "fixed", quality_changes=self.quality_changes,
            quality_floor_overloaded=self.floor_overloaded,
            sinks={w.sink.name: w.info() for w in self.workers}, source_up=self.source_up,
            paused=self.paused.is_set(), background=self.background_spec, source_stale_frames=self.stale_frames(),
            background_error=self.background_error())

    def set_background(self, spec: str, loaded: Background | None = None) -> None:
        """Swap the background (``loaded``: already built from ``spec``); applied on the next frame. Bad specs
        raise ValueError/MediaError."""
        if loaded is None:
            check_background(spec)
        new = loaded or self._load_background(spec)
        with self._bg_lock:
            if self._pending_background is not None:
                self._pending_background.close()
            self._pending_background = new
            self.background_spec = spec
        log.info("stream %s: background -> %s", self.id, spec)

    def pause(self) -> None:
        """Stop matting; frames pass through unchanged until ``resume()``."""
        self.paused.set()

    def resume(self) -> None:
        """Matte again, from a fresh recurrent state."""
        self.reset_requested.set()
        self.paused.clear()

    def reset(self) -> None:
        """Forget the recurrent state before the next frame."""
        self.reset_requested.set()

    def prepare_config(self, config: Config) -> Background | None:
        """Build what applying ``config`` needs that can fail (a new background), changing nothing yet: a
        SIGHUP is applied to every stream or to none. ConfigError when it fails."""
        if config.bg == self.config.bg:
            return None
        try:
            check_background(config.bg)
            return self._load_background(config.bg)
        except (ValueError, MediaError) as exc:
            raise ConfigError(str(exc)) from None

    def apply_config(self, config: Config, background: Background | None = None) -> list[str]:
        """Apply what can change while running (bg, mask_threshold, mirror); returns fields needing a restart.
        ``background``: what ``prepare_config`` built for it."""
        if config.bg != self.config.bg:
            self.set_background(config.bg, background or self.prepare_config(config))
        self.threshold, self.mirror = config.mask_threshold, config.mirror
        ignored = [f for f in config.__dataclass_fields__ if f not in LIVE_SETTINGS
                   and getattr(config, f) != getattr(self.config, f)]
        self.config = self.config.replace(bg=config.bg, mask_threshold=config.mask_threshold, mirror=config.mirror)
        return ignored
