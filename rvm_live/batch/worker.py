"""A batch worker: one model, loaded once, that mattes task after task through the daemon itself.

A clip runs exactly as ``rvm-live --source CLIP -o OUT`` would (the same ``Daemon``, the same sinks, the
output written as ``.part`` and renamed when complete); a segment swaps in a windowed source and an output
that drops the warm-up frames. Local worker processes and Ray actors both wrap this class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import RvmLiveError, one_line
from .plan import Task

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a running task reports its frames

Report = Callable[[str, int], None]  # (task key, frames written so far)


def task_result(task: Task, status: str, *, frames: int = 0, started: float = 0.0, ended: float = 0.0,
                error: str | None = None) -> dict[str, Any]:
    """The record a worker hands back for ``task`` (plain values: it crosses processes and Ray)."""
    seconds = max(ended - started, 0.0)
    return {"key": task.key, "clip": task.clip.relative, "status": status, "frames": frames,
            "started": started, "ended": ended, "fps": round(frames / seconds, 3) if seconds and frames else None,
            "output": task.output, "error": error}


class ClipWorker:
    """Holds one engine for ``config`` (device, backbone, precision) and runs tasks on it one at a time."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        """The model, loaded at the first task (a worker that gets none loads nothing)."""
        if self._engine is None:
            from ..engine.select import build_engine

            self._engine = build_engine(self.config, live=False)
        return self._engine

    def run(self, task: Task, report: Report | None = None) -> dict[str, Any]:
        """Matte ``task``; a clip that fails (bad file, decoder error, full disk) comes back ``failed`` with
        its reason instead of raising, so one bad clip never stops the others."""
        started = time.time()
        try:
            frames = self._matte(task, report or (lambda key, n: None))
        except (RvmLiveError, OSError, ValueError, TypeError) as exc:
            log.debug("%s failed", task.key, exc_info=True)
            return task_result(task, "failed", started=started, ended=time.time(), error=one_line(exc))
        except Exception as exc:  # a library's own error type (onnxruntime, CUDA): still this clip's alone
            log.debug("%s failed", task.key, exc_info=True)
            return task_result(task, "failed", started=started, ended=time.time(),
                               error=f"{type(exc).__name__}: {one_line(exc)}")
        return task_result(task, "done", frames=frames, started=started, ended=time.time())

    def _matte(self, task: Task, report: Report) -> int:
        from ..runtime.daemon import Daemon

        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        config = self.config.replace(source=task.clip.source, outputs=(task.output,))
        window = task.window
        dropped: Callable[[], int] = lambda: 0  # noqa: E731
        if window is None:
            daemon = Daemon(config, engine=self.engine)
        else:
            from ..io.sinks.base import create_sink
            from .segments import SegmentSource, WarmupDrop

            source = SegmentSource(task.clip.source, window, fps=config.fps)
            sink = WarmupDrop(create_sink(task.output, config), window.start)
            daemon = Daemon(config, engine=self.engine, source=source, sinks=[sink])
            dropped = lambda: sink.dropped  # noqa: E731
        try:
            daemon.start()
            while not daemon.wait(timeout=POLL_S):
                report(task.key, max(0, daemon.stats()["frames_out"] - dropped()))
        finally:
            daemon.close()
        frames = daemon.stats()["frames_out"] - dropped()
        if not Path(task.output).is_file():
            raise RvmLiveError(f"{task.clip.source}: no frames decoded, nothing written")
        report(task.key, frames)
        return frames
