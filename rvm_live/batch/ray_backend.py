"""``--ray``: the same tasks on Ray Data, an actor pool holding one model per worker.

Each clip (or segment) is one row and one call, since the recurrent state needs its frames in order; actors
ask for one GPU each where the cluster has GPUs, else two CPUs. Ray restarts a dead actor and retries its
task (``max_task_retries``); a task that keeps killing its worker is skipped (``max_errored_blocks``) and
reported failed, so it fails alone. Outputs go where the task says: OUTDIR must be a path every node shares.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import ConfigError
from .plan import Task
from .worker import ClipWorker, task_result

log = logging.getLogger(__name__)

POLL_S = 0.5
CPUS_PER_CPU_WORKER = 2
CONNECT_TIMEOUT_S = 5.0


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'rvm-live[cluster]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """ConfigError at once when nothing listens at a ``HOST:PORT`` address: Ray itself retries for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://... and other forms: Ray's own checks
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


class _Progress:
    """A Ray actor (no CPU) the workers tell their frames to; the driver reads it for the progress bar."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.started: dict[str, list[tuple[str, int]]] = {}

    def start(self, key: str, node: str, pid: int) -> None:
        self.started.setdefault(key, []).append((node, pid))
        self.frames[key] = 0

    def update(self, key: str, frames: int) -> None:
        self.frames[key] = frames

    def snapshot(self) -> tuple[dict[str, int], dict[str, list[tuple[str, int]]]]:
        return self.frames, self.started


class _Matter:
    """The actor class Ray Data instantiates once per worker: one ClipWorker, one model."""

    def __init__(self, config: Config, progress: Any, threads: int) -> None:
        import torch

        if config.device in ("auto", "cpu") or not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.worker = ClipWorker(config)
        self.progress = progress

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        import ray

        results = []
        for data in batch["task"]:
            task = pickle.loads(data)
            self.progress.start.remote(task.key, ray.util.get_node_ip_address(), os.getpid())
            result = self.worker.run(task, lambda key, frames: self.progress.update.remote(key, frames))
            results.append(json.dumps(result))
        return {"result": results}


class RayPool:
    """Runs tasks on the Ray cluster at ``address`` (``auto``: a running one, else one started here)."""

    def __init__(self, config: Config, address: str, *, workers: int | None = None, max_retries: int = 3) -> None:
        self.config, self.address, self.workers, self.max_retries = config, address, workers, max_retries

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            return  # an embedding program (or a test) already chose the cluster
        if self.address != "auto":
            _check_reachable(self.address)
            ray.init(address=self.address, log_to_driver=False)
            return
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:
            log.info("batch: no running Ray cluster found; starting one on this machine")
            ray.init(log_to_driver=False, include_dashboard=False)

    def _pool(self, ray: Any) -> tuple[int, dict[str, Any], int]:
        """(actors, resources per actor, threads per actor) from the cluster's GPUs and CPUs."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus and self.config.device != "cpu":
            return self.workers or gpus, {"num_gpus": 1, "num_cpus": 1}, CPUS_PER_CPU_WORKER
        size = self.workers or max(1, cpus // CPUS_PER_CPU_WORKER)
        threads = max(1, cpus // size)
        return size, {"num_cpus": min(threads, cpus)}, threads

    def run(self, tasks: list[Task], on_progress: Callable[[str, int], None],
            on_result: Callable[[dict[str, Any]], None]) -> None:
        """Run every task; ``on_progress(key, frames)`` while one runs, ``on_result(record)`` once each."""
        ray = _import_ray()
        self._connect(ray)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job shows its own bar, over frames rather than rows
        context.max_errored_blocks = len(tasks)  # a task whose retries run out fails alone
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        size, resources, threads = self._pool(ray)
        progress = ray.remote(num_cpus=0)(_Progress).remote()
        # the tasks travel in the rows: an actor restarted after a death needs nothing from the object store
        rows = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        # one call in flight per actor: a long clip never holds up others queued behind it, and a death
        # retries only the task that was running
        pool = ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)
        with warnings.catch_warnings():  # retries have no named parameter yet (Ray 2.60)
            warnings.simplefilter("ignore", DeprecationWarning)
            matted = rows.map_batches(_Matter, batch_size=1, compute=pool,
                                      fn_constructor_kwargs={"config": self.config, "progress": progress,
                                                             "threads": threads},
                                      max_task_retries=self.max_retries, max_restarts=-1, **resources)
        log.info("batch: Ray Data, %d actors with %s each", size, resources)
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(ray, progress, on_progress, stop),
                                   name="rvm-batch-ray-progress", daemon=True)
        watcher.start()
        seen: set[str] = set()
        try:
            for row in matted.iter_rows():
                result = json.loads(row["result"])
                seen.add(result["key"])
                on_result(result)
        finally:
            stop.set()
            watcher.join(2 * POLL_S)
        for task in tasks:
            if task.key not in seen:
                on_result(task_result(task, "failed", error=f"its worker died {self.max_retries + 1} times "
                                                            "(or Ray gave up on it)"))

    @staticmethod
    def _watch(ray: Any, progress: Any, on_progress: Callable[[str, int], None], stop: threading.Event) -> None:
        """Driver thread: copy the actors' frame counts to ``on_progress``; log each task's worker once."""
        logged: dict[str, int] = {}
        while not stop.wait(POLL_S):
            try:
                frames, started = ray.get(progress.snapshot.remote(), timeout=10)
            except Exception as exc:  # noqa: BLE001 - progress is only a display: never fail the job over it
                log.debug("progress unavailable: %s", exc)
                continue
            for key, workers in started.items():
                for node, pid in workers[logged.get(key, 0):]:
                    log.info("%s: started on %s (pid %d)", key, node, pid)
                logged[key] = len(workers)
            for key, count in frames.items():
                on_progress(key, count)
