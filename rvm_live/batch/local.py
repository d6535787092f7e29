"""The embedded default: a pool of worker processes on this machine, each holding its own model.

One worker per GPU, else one per two CPU cores (each with that many threads), so the workers share the
machine instead of fighting over it. The contract is Ray's: a worker that dies (killed, out of memory, a
crash in a native library) is replaced and its task retried, up to ``max_retries`` times; then that task
alone fails, with the reason, and the others go on.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from .plan import Task
from .worker import ClipWorker, task_result

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # Ray's default for a task whose worker dies
POLL_S = 0.2
CORES_PER_CPU_WORKER = 2
SPAWN = mp.get_context("spawn")  # a clean interpreter: no inherited threads, CUDA context or FFmpeg state


def default_workers(config: Config) -> tuple[list[str], int]:
    """``(device per worker, threads per worker)``: every GPU once when the run is on CUDA, else one CPU
    worker per two cores."""
    import torch

    wants_cuda = config.device == "auto" or config.device.startswith("cuda")
    if wants_cuda and torch.cuda.is_available():
        if config.device.startswith("cuda:"):
            return [config.device], 2
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())], 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = max(1, cores // CORES_PER_CPU_WORKER)
    return ["cpu"] * count, max(1, cores // count)


def _worker_main(config: Config, threads: int, tasks: Any, events: Any) -> None:
    """Worker process: take tasks from ``tasks`` until it closes, report progress and results on ``events``."""
    import torch

    torch.set_num_threads(threads)
    # each clip's daemon would log its opening and closing lines: the job's own log says what matters
    logging.basicConfig(level=logging.DEBUG if config.log_level == "debug" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    worker = ClipWorker(config)
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):  # the job ended (or died): nothing more to do
            return
        if task is None:
            return
        events.put(("started", task.key, os.getpid()))
        result = worker.run(task, lambda key, frames: events.put(("progress", key, frames)))
        events.put(("result", task.key, result))


@dataclass
class _Slot:
    """One worker process, its task pipe, and the task it is running."""

    device: str
    process: Any = None
    conn: Any = None
    task: Task | None = None


class LocalPool:
    """Runs tasks on ``devices`` (one process each) with ``threads`` threads per process."""

    def __init__(self, config: Config, devices: list[str], threads: int, *, max_retries: int = MAX_RETRIES) -> None:
        if not devices:
            raise ValueError("LocalPool: no devices")
        self.config, self.threads, self.max_retries = config, threads, max_retries
        self._slots = [_Slot(device) for device in devices]
        self._events = SPAWN.Queue()

    def _spawn(self, slot: _Slot) -> None:
        parent, child = SPAWN.Pipe()
        slot.process = SPAWN.Process(target=_worker_main, name=f"rvm-batch-{slot.device}",
                                     args=(self.config.replace(device=slot.device), self.threads, child,
                                           self._events), daemon=True)
        slot.process.start()
        child.close()
        slot.conn, slot.task = parent, None

    def run(self, tasks: list[Task], on_progress: Callable[[str, int], None],
            on_result: Callable[[dict[str, Any]], None]) -> None:
        """Run every task; ``on_progress(key, frames)`` while one runs, ``on_result(record)`` once each."""
        pending, attempts = deque(tasks), {t.key: 0 for t in tasks}
        try:
            while pending or any(s.task for s in self._slots):
                self._assign(pending)
                self._drain(on_progress, on_result, timeout=POLL_S)
                for slot in self._slots:
                    if slot.task is not None and not slot.process.is_alive():
                        self._drain(on_progress, on_result, timeout=0)  # its result may be on the way
                    if slot.task is not None and not slot.process.is_alive():
                        self._lost(slot, pending, attempts, on_progress, on_result)
        finally:
            self.close()

    def _assign(self, pending: deque[Task]) -> None:
        for slot in self._slots:
            if not pending:
                return
            if slot.task is None:
                if slot.process is None or not slot.process.is_alive():
                    self._spawn(slot)
                slot.task = pending.popleft()
                slot.conn.send(slot.task)

    def _drain(self, on_progress: Callable[[str, int], None], on_result: Callable[[dict[str, Any]], None], *,
               timeout: float) -> None:
        """Handle every event waiting (the first one waited for up to ``timeout``)."""
        while True:
            try:
                kind, key, value = self._events.get(timeout=timeout) if timeout else self._events.get_nowait()
            except queue.Empty:
                return
            timeout = 0
            slot = next((s for s in self._slots if s.task is not None and s.task.key == key), None)
            if slot is None:
                continue  # from a worker already given up on
            if kind == "started":
                log.info("%s: started on worker %s (pid %d)", key, slot.device, value)
            elif kind == "progress":
                on_progress(key, value)
            elif kind == "result":
                slot.task = None
                on_result(value)

    def _lost(self, slot: _Slot, pending: deque[Task], attempts: dict[str, int],
              on_progress: Callable[[str, int], None], on_result: Callable[[dict[str, Any]], None]) -> None:
        """The worker running ``slot.task`` died: retry the task on a new worker, or fail it for good."""
        task, code = slot.task, slot.process.exitcode
        assert task is not None
        slot.task = None
        attempts[task.key] += 1
        on_progress(task.key, 0)  # its frames will be written again
        if attempts[task.key] > self.max_retries:
            log.error("%s: its worker died %d times; giving up on it", task.key, attempts[task.key])
            now = time.time()
            on_result(task_result(task, "failed", started=now, ended=now,
                                  error=f"worker died {attempts[task.key]} times (last exit code {code})"))
            return
        log.warning("%s: worker died (exit code %s); retrying (%d of %d)", task.key, code, attempts[task.key],
                    self.max_retries)
        pending.appendleft(task)

    def close(self) -> None:
        """Tell every worker to stop and wait for it briefly (it finishes nothing more; idempotent)."""
        for slot in self._slots:
            if slot.conn is not None:
                try:
                    slot.conn.send(None)
                except (OSError, ValueError):
                    pass
                slot.conn.close()
                slot.conn = None
            if slot.process is not None:
                slot.process.join(5.0)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(1.0)
        self._events.close()
