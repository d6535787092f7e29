"""The inference stage: one thread serves every stream. It takes the frames that are ready and runs them through
the engine in one ``infer`` call (streams of one size and ratio share a network call, each with its own
recurrent state), then hands the matte to the render stage (rvm_live/runtime/render.py), which renders each
frame as its stream's plan says and fans it out to that stream's sink workers, while this thread goes on to
the next frames. A stream that is slow or lost never holds the others up: a batch waits for a missing stream
at most ``BATCH_WAIT_S``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from ..bus import Bus, EndOfStreamEvent, QualityChanged
from ..engine.core import Engine
from ..engine.render import Matte, RenderPlan
from ..engine.state import ratio_for
from ..frame import END, EndOfStream, Frame
from ..queues import Empty
from .governor import Governor, RungMemory, ladder_ratios
from .render import RenderStage
from .session import Session
from .sink_worker import SinkWorker

log = logging.getLogger(__name__)

POLL_S = 0.1
BATCH_WAIT_S = 0.004  # how long a batch may wait for another live stream's frame
CALIBRATION_CALLS = 2  # timed network calls per rung when a stream with no remembered rung starts
LIVE_OUTPUT_WAIT_S = 1.0  # how long a file job waits on a stuck live output before dropping a frame for it

Member = tuple[Session, Frame, np.ndarray]  # a stream, its frame, and the picture the network sees
Outputs = list[tuple[Session, list[Frame]]]


class InferenceStage:
    """``run()`` is the thread body. ``renderer``: the render stage that renders and hands over the results
    (None: this thread does it, as ``matte_one`` always does)."""

    def __init__(self, sessions: list[Session], engine: Engine, *, stop: threading.Event, bus: Bus,
                 doorbell: threading.Event, renderer: RenderStage | None = None,
                 batch_wait_s: float = BATCH_WAIT_S) -> None:
        self.sessions = sessions
        self.engine = engine
        self.stop = stop
        self.bus = bus
        self.doorbell = doorbell
        self.renderer = renderer
        self.batch_wait_s = batch_wait_s
        self._held: dict[str, Frame | EndOfStream] = {}  # taken from a queue, not yet processed
        self._generation: dict[str, int | None] = {s.id: None for s in sessions}
        self._governors: dict[str, Governor] = {}  # live streams with quality = "auto"
        self._rung_memory = RungMemory.default()
        self.batches = 0  # network calls made
        self.batched_frames = 0  # frames that went through them

    def run(self) -> None:
        active = list(self.sessions)
        try:
            while active and not self.stop.is_set():
                ready = self._collect(active)
                if not ready:
                    self.doorbell.wait(POLL_S)
                    self.doorbell.clear()
                    continue
                for session, item in ready:
                    if item is END:
                        self._submit(functools.partial(self._end, session))
                        active.remove(session)
                if not self._process([(s, f) for s, f in ready if f is not END]):
                    return
            if self.renderer is not None:
                self.renderer.drain()  # every frame matted reaches its outputs before their END
        except BaseException:
            for session in self.sessions:
                session.failed.set()  # before END reaches the outputs: they must not publish a truncated file
            raise
        finally:
            if self.renderer is not None:
                self.renderer.close()
            for session in self.sessions:
                for worker in session.workers:
                    worker.queue.put(END, force=True)
                session.close_backgrounds()

    # ----- gathering -------------------------------------------------------------------------------------
    def _take(self, session: Session) -> Frame | EndOfStream | None:
        item = self._held.pop(session.id, None)
        if item is not None:
            return item
        try:
            return session.capture_queue.get(timeout=0)
        except Empty:
            return None

    def _collect(self, active: list[Session]) -> list[tuple[Session, Frame | EndOfStream]]:
        """One item from every stream that has one; when some live stream has none yet, wait a few ms for
        it so that it can join the batch."""
        ready = [(s, item) for s in active if (item := self._take(s)) is not None]
        if ready and len(ready) < len(active) and any(s.live for s in active):
            self.doorbell.clear()
            if self.doorbell.wait(self.batch_wait_s):
                have = {s.id for s, _ in ready}
                ready += [(s, item) for s in active if s.id not in have and (item := self._take(s)) is not None]
        return ready

    def _chunk(self, session: Session, first: Frame) -> list[Frame]:
        """``first`` plus the frames already waiting, up to the session's chunk, of the same source and size."""
        batch = [first]
        while len(batch) < session.chunk and not session.paused.is_set():
            try:
                nxt = session.capture_queue.get(timeout=0)
            except Empty:
                break
            if nxt is END or nxt.generation != first.generation or nxt.image.shape != first.image.shape:
                self._held[session.id] = nxt
                break
            batch.append(nxt)
        return batch

    # ----- matting -------------------------------------------------------------------------------------
    def _process(self, ready: list[tuple[Session, Frame]]) -> bool:
        """Matte one frame (or one chunk) per stream and hand the rendering over; False when stopping."""
        done: Outputs = []  # paused streams' frames: nothing to compute
        renders: list[tuple[Matte, list[RenderPlan], list[Member]]] = []
        members: list[Member] = []
        started = time.perf_counter()
        for session, frame in ready:
            self._maybe_reset(session, frame)
            image = session.input_image(frame)
            if session.governed and not session.paused.is_set():
                self._governor(session, image)  # before the network: a new stream's start rung is chosen first
            if session.paused.is_set():
                done.append((session, [session.passthrough(frame, image)]))
            elif session.chunk > 1:
                renders.append(self._matte_chunk(session, self._chunk(session, frame)))
            else:
                members.append((session, frame, image))
        if members:
            matte = self.engine.infer([m[2] for m in members], [m[0].state for m in members])
            renders.append((matte, [m[0].plan() for m in members], members))
        if not done and not renders:
            return True
        delivered = self._submit(functools.partial(self._render, done, renders))
        if members:
            # the governor sees what a frame costs the pipeline: the network, plus any wait for the render of
            # the frame before (the slower half sets the rate)
            self._observe(members, renders[-1][0], (time.perf_counter() - started) * 1000)
        return delivered

    def _render(self, done: Outputs, renders: list[tuple[Matte, list[RenderPlan], list[Member]]]) -> bool:
        """Render the mattes and hand every frame to its outputs (on the render thread); False when stopping."""
        outputs = list(done)
        for matte, plans, entries in renders:
            pictures = self.engine.render(matte, plans)
            outputs += [(session, [session.finish(frame, image, picture)])
                        for (session, frame, image), picture in zip(entries, pictures)]
        return self._fan_out(outputs)

    def _submit(self, job: Callable[[], object]) -> bool:
        """Run ``job`` after everything handed over before it: on the render thread, or here without one."""
        if self.renderer is None:
            return job() is not False
        return self.renderer.submit(lambda: job() is not False)

    def _fan_out(self, outputs: Outputs) -> bool:
        for session, frames in outputs:
            for out in frames:
                session.stats_data.frame_out()
                for worker in session.workers:
                    if not self._hand_over(worker, out):
                        return False
        return True

    def matte_one(self, session: Session, frame: Frame) -> Frame:
        """Matte and render one frame of ``session`` now, in this thread, without handing it to the outputs."""
        self._maybe_reset(session, frame)
        image = session.input_image(frame)
        if session.paused.is_set():
            return session.passthrough(frame, image)
        matte = self.engine.infer([image], [session.state])
        return session.finish(frame, image, self.engine.render(matte, [session.plan()])[0])

    def _maybe_reset(self, session: Session, frame: Frame) -> None:
        if frame.generation != self._generation[session.id] or session.reset_requested.is_set():
            session.reset_requested.clear()
            session.state.reset()
            self._generation[session.id] = frame.generation

    def _matte_chunk(self, session: Session, frames: list[Frame]) -> tuple[Matte, list[RenderPlan], list[Member]]:
        images = [session.input_image(f) for f in frames]
        matte = self.engine.infer_clip(np.stack(images), session.state)
        self.batches += 1
        self.batched_frames += len(frames)
        return matte, [session.plan()], [(session, f, image) for f, image in zip(frames, images)]

    def _observe(self, members: list[Member], matte: Matte, step_ms: float) -> None:
        """Count the network calls and let the governor see the time."""
        self.batches += len(matte.rows)
        self.batched_frames += len(members)
        for session, _, image in members:
            self._govern(session, image, step_ms)

    def _govern(self, session: Session, image: np.ndarray, step_ms: float) -> None:
        """Live streams with ``quality = "auto"``: let the governor move the ratio (state carried, resized); the
        change goes on the bus (the session counts it, the daemon logs it)."""
        if not session.governed:
            return
        event = self._governor(session, image).observe(step_ms, time.monotonic(), settling=self.engine.settling)
        if isinstance(event, QualityChanged):
            session.state.set_ratio(event.ratio)
        if event is not None:
            self.bus.post(event)

    def _governor(self, session: Session, image: np.ndarray) -> Governor:
        """The stream's governor for this frame size, made (and its start rung chosen) on the first frame of a
        size: the rung remembered for this kind of stream, else a calibration on this frame."""
        governor = self._governors.get(session.id)
        height, width = image.shape[:2]
        if governor is not None and governor.size == (height, width):
            return governor
        top = ratio_for(session.config.downsample, height, width)
        # this kind of stream on this machine: the memory of where it settled is per engine, size and rate
        key = f"{self.engine.runtime}/{self.engine.fullres}/{width}x{height}@{session.fps:.3g}/top{top:.4g}"
        governor = self._governors[session.id] = Governor(
            ladder_ratios(height, width, top), interval_ms=1000 / session.fps,
            budget_ms=session.config.latency_budget, size=(height, width), stream_id=session.id,
            memory=self._rung_memory, memory_key=key)
        event = None
        if not governor.recalled and len(governor.ratios) > 1:
            event = governor.calibrate(self._calibration(image, governor.ratios))
        session.state.prepare(height, width)  # as the network call would: a new size starts a fresh state
        if governor.ratio != session.state.ratio:  # a remembered or calibrated rung: start there, not at the top
            session.state.set_ratio(governor.ratio)
        if event is not None:  # said once the state runs at it (stats never show the change without the ratio)
            self.bus.post(event)
        return governor

    def _calibration(self, image: np.ndarray, ratios: list[float]) -> dict[int, float]:
        """The network's time on ``image`` at the top and the bottom rung (ms, the best of a few calls, each from
        a fresh state so that nothing is compiled for shapes the stream may never use), times the number of
        governed streams that share each call."""
        shared = sum(1 for s in self.sessions if s.governed)
        costs = {}
        for rung in (0, len(ratios) - 1):
            times = []
            for _ in range(CALIBRATION_CALLS + 1):  # the first call at a size sets up its buffers: not counted
                start = time.perf_counter()
                self.engine.infer([image], [self.engine.new_state(ratios[rung])])
                times.append((time.perf_counter() - start) * 1000)
            costs[rung] = min(times[1:]) * shared
        return costs

    # ----- fan-out -------------------------------------------------------------------------------------
    def _hand_over(self, worker: SinkWorker, frame: Frame) -> bool:
        """Queue ``frame`` for one output; False when stopping. A file output waits as long as it takes (no
        frame lost); a live output that has not taken a frame for ``LIVE_OUTPUT_WAIT_S`` (stuck writing or
        connecting) loses this one instead of holding up inference and every other output."""
        deadline = time.monotonic() + LIVE_OUTPUT_WAIT_S if worker.sink.live else None
        while not worker.queue.put(frame, timeout=POLL_S):
            if self.stop.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                worker.count_lost()
                return True
        return True

    def _end(self, session: Session) -> bool:
        """A stream's source is exhausted: its outputs finish; the other streams go on."""
        for worker in session.workers:
            worker.queue.put(END, force=True)
        self.bus.post(EndOfStreamEvent(session.id))
        return True
