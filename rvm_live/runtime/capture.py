"""The capture stage: one thread per stream reads its source into the stream's bounded queue, reopening a
live source with backoff when it is lost (one log line when an outage starts, one when it ends)."""

from __future__ import annotations

import logging
import threading
import time

from ..bus import Bus, SourceBack, SourceLost
from ..errors import SourceError
from ..frame import END, Frame
from .session import Session

log = logging.getLogger(__name__)

POLL_S = 0.1


class CaptureStage:
    """``run()`` is the thread body for one session's source."""

    def __init__(self, session: Session, *, stop: threading.Event, bus: Bus,
                 doorbell: threading.Event | None = None) -> None:
        self.session = session
        self.stop = stop
        self.bus = bus
        # rung after every frame, so the inference stage (which serves many queues) wakes at once
        self.doorbell = doorbell or threading.Event()

    def run(self) -> None:
        session, source = self.session, self.session.source
        index, generation = 0, 0
        limit = session.config.max_frames
        try:
            while not self.stop.is_set():
                if limit is not None and index >= limit:
                    break
                try:
                    image = source.read()
                except SourceError as exc:
                    if not session.reconnects:
                        raise
                    if not self._reconnect(exc):
                        break
                    generation += 1
                    continue
                if image is None:
                    if session.reconnects and self._reconnect(SourceError(f"{source.name}: stream ended")):
                        generation += 1
                        continue
                    break
                frame = Frame(index, time.monotonic_ns(), session.id, image, generation=generation,
                              pts=source.last_pts)
                session.stats_data.frame_in()
                while not session.capture_queue.put(frame, timeout=POLL_S):
                    if self.stop.is_set():
                        return
                self.doorbell.set()
                index += 1
        except BaseException:
            session.failed.set()
            raise
        finally:
            session.capture_queue.put(END, force=True)
            self.doorbell.set()
            source.close()

    def _reconnect(self, cause: Exception) -> bool:
        """Reopen a lost live source with backoff; one log line per outage, and ``SourceLost``/``SourceBack`` on
        the bus (the session and the outputs follow them). False when stopping."""
        session = self.session
        lost_at = time.monotonic()
        if session.source_up:  # (not up yet at start: "waiting" was said already)
            log.warning("%ssource lost: %s; retrying with backoff", session.log_prefix, cause)
            self.bus.post(SourceLost(session.id, str(cause)))
        # what lets it come back fast (a bound UDP socket) stays; the rest is released
        session.source.suspend()
        for delay in session.source.retry_delays():
            if self.stop.wait(delay):
                return False
            try:
                session.source.open()
            except SourceError as exc:
                log.debug("reconnect failed: %s", exc)
                continue
            seconds = time.monotonic() - lost_at
            log.warning("%ssource back after %.1f s", session.log_prefix, seconds)
            self.bus.post(SourceBack(session.id, seconds))
            return True
        return False  # pragma: no cover - the generator never ends
