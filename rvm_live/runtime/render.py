"""The render stage: one thread, owned by the daemon, that renders what the inference thread matted
(``Engine.render``: the blend and the trip to the host) and hands the frames to the outputs.

While the inference thread runs the network on frame N+1, this one renders frame N (OpenCV and the copies
release the GIL). On a 2-core CPU that overlap is worth 15-30 % more frames with the fast full-resolution
stage (BENCHMARKS.md); on a GPU the next upload and graph replay overlap the download. It holds one job at
most, so latency cannot build up, and runs the jobs in order, so each stream's frames (and its end) reach the
outputs in order. A job that fails stops the run with its error, raised on the inference thread (which marks
the run failed before any output is finalised).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

POLL_S = 0.1

Job = Callable[[], bool]  # renders and hands over; False when the outputs are stopping


class RenderStage:
    """``submit(job)`` from the inference thread; ``drain()`` waits for the last one; ``close()`` ends the
    thread. ``stop`` is the daemon's stop event."""

    def __init__(self, stop: threading.Event, name: str = "rvm-render") -> None:
        self.stop = stop
        self.stopped = False  # stopping, or a job failed: nothing more is run
        self._cond = threading.Condition()
        self._job: Job | None = None  # queued or running
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> RenderStage:
        """Start the thread (once)."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def submit(self, job: Job) -> bool:
        """Hand over ``job`` once the previous one is done; raises the error of a job that failed. False when
        stopping (the job is dropped)."""
        with self._cond:
            while self._job is not None and not self.stopped:
                if self.stop.is_set():
                    self.stopped = True
                    break
                self._cond.wait(POLL_S)
            self._raise()
            if self.stopped:
                return False
            self._job = job
            self._cond.notify_all()
            return True

    def drain(self) -> None:
        """Wait until the job handed over is done (and raise its error if it failed)."""
        with self._cond:
            while self._job is not None and not self.stopped and not self.stop.is_set():
                self._cond.wait(POLL_S)
            self._raise()

    def close(self) -> None:
        """Let the thread finish the job it holds, then end (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._started:
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
                delivered = self.stopped or job()
            except BaseException as exc:  # noqa: BLE001 - raised again on the inference thread
                with self._cond:
                    self._error, self.stopped, self._job = exc, True, None
                    self._cond.notify_all()
                return
            with self._cond:
                self._job = None
                self.stopped = self.stopped or not delivered
                self._cond.notify_all()
