"""The inference stage: one thread serves every stream. It takes the frames that are ready, batches the
streams of the same size and ratio into one network call (each with its own recurrent state), blends each
frame over its stream's background, downloads what the outputs need and fans the result out to that
stream's sink workers. A stream that is slow or lost never holds the others up: a batch waits for a
missing stream at most ``BATCH_WAIT_S``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import numpy as np
import torch

from ..bus import Bus, EndOfStreamEvent
from ..compositing.backgrounds import composite
from ..engine.matter import auto_downsample_ratio
from ..engine.transfer import Download
from ..frame import END, EndOfStream, Frame
from ..queues import Empty
from .governor import Governor, ladder_ratios
from .session import Session
from .sink_worker import SinkWorker

log = logging.getLogger(__name__)

POLL_S = 0.1
BATCH_WAIT_S = 0.004  # how long a batch may wait for another live stream's frame
PIPELINED = True  # the CPU fast path's full-res stage on its own thread (Finisher); False: all on this one
LIVE_OUTPUT_WAIT_S = 1.0  # how long a file job waits on a stuck live output before dropping a frame for it


class InferenceStage:
    """``run()`` is the thread body. ``engine.step(images, states)`` mattes one frame per state."""

    def __init__(self, sessions: list[Session], engine: Any, *, stop: threading.Event, bus: Bus,
                 doorbell: threading.Event, batch_wait_s: float = BATCH_WAIT_S) -> None:
        self.sessions = sessions
        self.engine = engine
        self.stop = stop
        self.bus = bus
        self.doorbell = doorbell
        self.batch_wait_s = batch_wait_s
        self._held: dict[str, Frame | EndOfStream] = {}  # taken from a queue, not yet processed
        self._generation: dict[str, int | None] = {s.id: None for s in sessions}
        self._download = Download()  # this thread's pinned host buffer
        self._finisher: Finisher | None = None  # the CPU fast path's second half on its own thread (run())
        self.batches = 0  # network calls made
        self.batched_frames = 0  # frames that went through them

    def run(self) -> None:
        active = list(self.sessions)
        if getattr(self.engine, "fused", False) and PIPELINED:
            self._finisher = Finisher(self)
        try:
            while active and not self.stop.is_set():
                ready = self._collect(active)
                if not ready:
                    self.doorbell.wait(POLL_S)
                    self.doorbell.clear()
                    continue
                for session, item in ready:
                    if item is END:
                        self._deliver(functools.partial(self._end, session))
                        active.remove(session)
                if not self._process([(s, f) for s, f in ready if f is not END]):
                    return
            if self._finisher is not None:
                self._finisher.drain()  # every frame begun reaches its outputs before their END
        except BaseException:
            for session in self.sessions:
                session.failed.set()  # before END reaches the outputs: they must not publish a truncated file
            raise
        finally:
            if self._finisher is not None:
                self._finisher.close()
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
        """Matte and hand over one frame (or one chunk) per stream; False when stopping."""
        groups: dict[tuple, list[tuple[Session, Frame, np.ndarray]]] = {}
        outputs: list[tuple[Session, list[Frame]]] = []
        for session, frame in ready:
            self._maybe_reset(session, frame)
            image = session.input_image(frame)
            if session.paused.is_set():
                outputs.append((session, [session.passthrough(frame, image)]))
            elif session.chunk > 1:
                outputs += self._matte_chunk(session, self._chunk(session, frame))
            else:
                groups.setdefault(self._batch_key(session, image), []).append((session, frame, image))
        if self._finisher is None:
            for members in groups.values():
                outputs += self._matte_batch(members)
            return self._fan_out(outputs)
        if outputs:  # paused streams' frames: nothing left to compute
            self._finisher.submit(lambda: outputs)
        for members in groups.values():
            started = time.perf_counter()
            self._finisher.submit(self._begin_fused(members))
            # the governor sees what a frame costs the pipeline: the network, plus any wait for the full-res
            # stage of the frame before (the slower half sets the rate)
            self._observe(members, (time.perf_counter() - started) * 1000)
        return not self._finisher.stopped

    def _deliver(self, work: Any) -> None:
        """Run ``work`` (a stream's end) after every frame before it reached the outputs."""
        if self._finisher is None:
            work()
            return

        def job() -> list:
            work()
            return []

        self._finisher.submit(job)

    def _fan_out(self, outputs: list[tuple[Session, list[Frame]]]) -> bool:
        for session, frames in outputs:
            for out in frames:
                session.stats_data.frame_out()
                for worker in session.workers:
                    if not self._hand_over(worker, out):
                        return False
        return True

    def matte_one(self, session: Session, frame: Frame) -> Frame:
        """Matte and composite one frame of ``session`` now, without handing it to the outputs."""
        self._maybe_reset(session, frame)
        image = session.input_image(frame)
        if session.paused.is_set():
            return session.passthrough(frame, image)
        return self._matte_batch([(session, frame, image)])[0][1][0]

    def _maybe_reset(self, session: Session, frame: Frame) -> None:
        if frame.generation != self._generation[session.id] or session.reset_requested.is_set():
            session.reset_requested.clear()
            session.state.reset()
            self._generation[session.id] = frame.generation

    @staticmethod
    def _batch_key(session: Session, image: np.ndarray) -> tuple:
        """Streams with equal keys go through one network call: same frame size and same ratio. A state that
        has not seen this size yet steps alone once (its ratio is decided on that step)."""
        state = session.state
        if getattr(state, "size", None) == image.shape[:2] and getattr(state, "ratio", None) is not None:
            return (image.shape, state.ratio)
        return (image.shape, "new", session.id)

    def _matte_batch(self, members: list[tuple[Session, Frame, np.ndarray]]) -> list[tuple[Session, list[Frame]]]:
        sessions = [m[0] for m in members]
        started = time.perf_counter()
        if getattr(self.engine, "fused", False):  # network and blend in one call per stream (CPU fast path)
            results = self._begin_fused(members)()
        else:
            with torch.inference_mode():
                out = self.engine.step([m[2] for m in members], [s.state for s in sessions])
                results = self._blend_all(members, out)
        self._observe(members, (time.perf_counter() - started) * 1000)
        return results

    def _begin_fused(self, members: list[tuple[Session, Frame, np.ndarray]]) -> Any:
        """The CPU fast path's network half for each stream, now; returns the full-resolution half, to call
        on the finisher's thread (or at once)."""
        begun = [(session, frame, image, self.engine.begin(image, session.state))
                 for session, frame, image in members]

        def complete() -> list[tuple[Session, list[Frame]]]:
            return [(session, [session.finish(frame, image, *self.engine.complete(
                work, session.state, session.background(), session.threshold))])
                for session, frame, image, work in begun]

        return complete

    def _observe(self, members: list[tuple[Session, Frame, np.ndarray]], step_ms: float) -> None:
        """Count the call and let the governor see its time."""
        self.batches += 1
        self.batched_frames += len(members)
        for session, _, image in members:
            self._govern(session, image, step_ms)

    def _govern(self, session: Session, image: np.ndarray, step_ms: float) -> None:
        """Live streams with ``quality = "auto"``: let the governor move the ratio (state carried, resized)."""
        if not session.live or session.config.quality != "auto" or not hasattr(session.state, "set_ratio"):
            return
        if session.governor is None or session.governor.size != image.shape[:2]:
            height, width = image.shape[:2]
            setting = session.config.downsample
            top = auto_downsample_ratio(height, width) if setting == "auto" else float(setting)
            session.governor = Governor(ladder_ratios(height, width, top), interval_ms=1000 / session.fps,
                                        budget_ms=session.config.latency_budget, size=(height, width),
                                        stream_id=session.id)
        change = session.governor.observe(step_ms, time.monotonic())
        if change is not None:
            session.state.set_ratio(change.ratio)
            session.quality_changes += 1
            self.bus.post(change)

    def _matte_chunk(self, session: Session, frames: list[Frame]) -> list[tuple[Session, list[Frame]]]:
        images = [session.input_image(f) for f in frames]
        with torch.inference_mode():
            src = self.engine.upload(np.stack(images))
            fgr, pha = self.engine.run_clip(src.unsqueeze(0), session.state)
            results = [self._blend(session, f, img, fgr[0, t:t + 1], pha[0, t:t + 1], src[t:t + 1])
                       for t, (f, img) in enumerate(zip(frames, images))]
        self.batches += 1
        self.batched_frames += len(frames)
        return [(session, results)]

    def _blend_all(self, members: list[tuple[Session, Frame, np.ndarray]],
                   out: Any) -> list[tuple[Session, list[Frame]]]:
        """Blend a batch's frames over their streams' backgrounds: in one call and one download when the
        streams agree on the mask threshold and on transparency, else stream by stream."""
        sessions = [m[0] for m in members]
        backgrounds = [s.background() for s in sessions]
        uniform = len({s.threshold for s in sessions}) == 1 and len({bg.transparent for bg in backgrounds}) == 1
        if len(members) == 1 or not uniform:
            return [(session, [self._blend(session, frame, image, out.fgr[b:b + 1], out.pha[b:b + 1],
                                           out.src[b:b + 1], background)])
                    for b, ((session, frame, image), background) in enumerate(zip(members, backgrounds))]
        result = composite(out.fgr, out.pha, backgrounds, out.src, threshold=sessions[0].threshold)
        pictures = self._download(result.image)
        alphas = result.alpha.numpy() if result.alpha.device.type == "cpu" else [None] * len(members)
        return [(session, [session.finish(frame, image, pictures[b], alphas[b])])
                for b, (session, frame, image) in enumerate(members)]

    def _blend(self, session: Session, frame: Frame, image: np.ndarray, fgr: torch.Tensor, pha: torch.Tensor,
               src: torch.Tensor, background: Any = None) -> Frame:
        background = background if background is not None else session.background()
        result = composite(fgr, pha, background, src, threshold=session.threshold)
        # only the picture comes down (pinned buffer + event on CUDA): no output reads Frame.alpha, so it is
        # kept only where it costs no copy (on the CPU, a view of the composite's own alpha)
        alpha = result.alpha.numpy() if result.alpha.device.type == "cpu" else None
        return session.finish(frame, image, self._download(result.image), alpha)

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

    def _end(self, session: Session) -> None:
        """A stream's source is exhausted: its outputs finish; the other streams go on."""
        session.ended = True
        for worker in session.workers:
            worker.queue.put(END, force=True)
        self.bus.post(EndOfStreamEvent(session.id))


class Finisher:
    """The CPU fast path in two threads: while the inference thread runs the network on frame N+1, this one
    runs frame N's full-resolution stage (OpenCV, which releases the GIL) and hands it to the outputs. On two
    cores that overlap is worth 15-30 % more frames (BENCHMARKS.md). It holds one job at most, so latency cannot
    build up, and runs them in order, so each stream's frames (and its END) reach the outputs in order. A job
    that fails stops the pipeline with its error, raised on the inference thread."""

    def __init__(self, stage: InferenceStage) -> None:
        self.stage = stage
        self.stopped = False  # stopping, or a job failed: nothing more is handed over
        self._cond = threading.Condition()
        self._job: Any = None  # queued or running
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rvm-finish", daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> None:
        """Hand over ``job`` (a callable returning ``[(session, frames)]``) once the previous one is done."""
        with self._cond:
            while self._job is not None and not self.stopped:
                if self.stage.stop.is_set():
                    self.stopped = True
                    break
                self._cond.wait(POLL_S)
            self._raise()
            if not self.stopped:
                self._job = job
                self._cond.notify_all()

    def drain(self) -> None:
        """Wait until the job handed over is done (and raise its error if it failed)."""
        with self._cond:
            while self._job is not None and not self.stopped and not self.stage.stop.is_set():
                self._cond.wait(POLL_S)
            self._raise()

    def close(self) -> None:
        """Let the thread finish the job it holds, then end."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(10 * POLL_S + 5)

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closing:
                    self._cond.wait()
                if self._job is None:
                    return
                job = self._job
            try:
                delivered = self.stopped or self.stage._fan_out(job())
            except BaseException as exc:  # noqa: BLE001 - raised again on the inference thread
                with self._cond:
                    self._error, self.stopped, self._job = exc, True, None
                    self._cond.notify_all()
                return
            with self._cond:
                self._job = None
                self.stopped = self.stopped or not delivered
                self._cond.notify_all()
