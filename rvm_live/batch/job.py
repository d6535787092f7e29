"""A batch job from start to summary: plan, skip what is finished, run the tasks (locally or on Ray), join
the segments of long clips, and write the JSON summary."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import _write_stats
from ..config import Config
from ..errors import ConfigError, MediaError
from .plan import WORK_DIR, Clip, Task, plan_clips, plan_tasks, probe
from .segments import join

log = logging.getLogger(__name__)

# Frames a segment starts early so its recurrent state has converged at the seam (BENCHMARKS.md, "Seam error
# against W"): on the demo clip, mean |Δα| over the 15 frames after a seam falls 0.0029 (W=0), 0.0016 (8),
# 0.0010 (16), 0.0006 (32), 0.00014 (64); 32 keeps even the first frame under a fifth of one 8-bit alpha step
# for about a second of extra frames per segment
DEFAULT_WARMUP = 32
SUMMARY_NAME = "batch-summary.json"
# a background video restarts in each segment, and WebM keeps alpha in side data a stream copy may lose
UNSPLITTABLE_EXT = (".webm",)


@dataclass(frozen=True)
class JobOptions:
    """What ``rvm-live batch`` was asked, beyond the per-clip Config."""

    inputs: tuple[str, ...]
    outdir: str
    suffix: str = ""
    ext: str = ".mp4"
    segment: float | None = None
    warmup: int = DEFAULT_WARMUP
    workers: int | None = None
    ray: str | None = None
    retries: int = 3
    summary: str | None = None
    quiet: bool = False


class FrameCount:
    """Frames written so far by every task, the number the progress bar shows (a retried task's count
    starts again at 0)."""

    def __init__(self) -> None:
        self._frames: dict[str, int] = {}
        self._lock = threading.Lock()

    def update(self, key: str, frames: int) -> None:
        with self._lock:
            self._frames[key] = frames

    def stats(self) -> dict[str, Any]:
        """What ``rvm_live.progress.Progress`` reads."""
        with self._lock:
            return {"frames_out": sum(self._frames.values())}


def run_job(config: Config, options: JobOptions, *, show_progress: Callable[..., Any] | None = None) -> dict:
    """Run the whole job and return the summary (also written to ``options.summary``)."""
    began = time.time()
    clips = plan_clips(list(options.inputs), options.outdir, suffix=options.suffix, ext=options.ext)
    if not clips:
        raise ConfigError(f"no video files in {', '.join(options.inputs)}")
    finished = {c.output for c in clips if Path(c.output).is_file()}
    todo = [c for c in clips if c.output not in finished]
    segment = options.segment if _splittable(config, options) else None
    tasks = plan_tasks(todo, options.outdir, segment_s=segment, warmup=options.warmup)
    # resume: a segment finished before the stop is kept (its file exists only once complete)
    results = {t.key: _earlier(t) for t in tasks if t.window is not None and Path(t.output).is_file()}
    runnable = [t for t in tasks if t.key not in results]
    log.info("batch: %d clips (%d finished earlier), %d tasks to run", len(clips), len(finished), len(runnable))
    counter = FrameCount()
    bar = show_progress(counter.stats, total=sum(t.frames for t in runnable) or None) if show_progress else None
    try:
        if runnable:
            _backend(config, options).run(runnable, counter.update, lambda r: _finished(r, results, counter))
    finally:
        if bar is not None:
            bar.close()
    records = [_clip_record(c, [t for t in tasks if t.clip == c], results, c.output in finished) for c in clips]
    summary = _summary(records, time.time() - began, options)
    path = Path(options.summary or Path(options.outdir) / SUMMARY_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_stats(str(path), summary)  # the daemon's atomic JSON write: a crash mid-write leaves the old one
    return summary


def _splittable(config: Config, options: JobOptions) -> bool:
    if not options.segment:
        return False
    from ..compositing.backgrounds import VIDEO_SUFFIXES

    if Path(config.bg).suffix.lower() in VIDEO_SUFFIXES:
        log.warning("batch: --segment is off: a background video would restart in every segment")
        return False
    if options.ext in UNSPLITTABLE_EXT or config.max_frames is not None:
        log.warning("batch: --segment is off for %s outputs and with --max-frames", options.ext)
        return False
    return True


def _backend(config: Config, options: JobOptions) -> Any:
    if options.ray:
        from .ray_backend import RayPool

        return RayPool(config, options.ray, workers=options.workers, max_retries=options.retries)
    from .local import LocalPool, default_workers

    devices, threads = default_workers(config)
    if options.workers:
        devices = (devices * options.workers)[: options.workers]
        threads = max(1, threads * len(set(devices)) // options.workers) if devices[0] == "cpu" else threads
    return LocalPool(config, devices, threads, max_retries=options.retries)


def _earlier(task: Task) -> dict[str, Any]:
    from .worker import task_result

    return {**task_result(task, "done", frames=probe(task.output).frames), "earlier": True}


def _finished(result: dict[str, Any], results: dict[str, dict[str, Any]], counter: FrameCount) -> None:
    results[result["key"]] = result
    counter.update(result["key"], result["frames"])  # the final count, whatever progress reports missed
    if result["status"] == "failed":
        log.warning("batch: %s failed: %s", result["key"], result["error"])
    else:
        log.info("batch: %s done: %d frames at %s fps", result["key"], result["frames"], result["fps"])


def _clip_record(clip: Clip, tasks: list[Task], results: dict[str, dict[str, Any]], earlier: bool) -> dict:
    """One clip's line in the summary; a segmented clip whose segments are all done is joined here."""
    record: dict[str, Any] = {"source": clip.source, "output": clip.output, "status": "skipped", "frames": None,
                              "fps": None, "seconds": None, "error": None}
    if earlier:
        return {**record, "frames": probe(clip.output).frames or None}
    done = [results.get(t.key) for t in tasks]
    failed = [r for r in done if r is None or r["status"] != "done"]
    if failed:
        why = failed[0]["error"] if failed[0] is not None else "not run (the job stopped)"
        return {**record, "status": "failed", "error": why}
    frames = sum(r["frames"] for r in done)
    if len(tasks) > 1 or tasks[0].window is not None:
        try:
            frames = join([t.output for t in sorted(tasks, key=lambda t: t.window.index)], clip.output)
        except MediaError as exc:
            return {**record, "status": "failed", "error": str(exc)}
        _remove_parts(Path(tasks[0].output).parent)
        record["segments"] = len(tasks)
    fresh = [r for r in done if not r.get("earlier")]
    seconds = max(r["ended"] for r in fresh) - min(r["started"] for r in fresh) if fresh else None
    return {**record, "status": "done", "frames": frames, "seconds": round(seconds, 3) if seconds else None,
            "fps": round(frames / seconds, 3) if seconds else None}


def _remove_parts(folder: Path) -> None:
    """Delete a joined clip's segment folder, and the folders above it up to OUTDIR that it leaves empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if not parent.is_dir() or any(parent.iterdir()):
            return
        parent.rmdir()
        if parent.name == WORK_DIR:
            return


def _summary(records: list[dict[str, Any]], seconds: float, options: JobOptions) -> dict[str, Any]:
    count = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
    per_minute = round(count["done"] * 60 / seconds, 3) if seconds else None
    return {"clips": len(records), **count, "frames": sum(r["frames"] or 0 for r in records if r["status"] == "done"),
            "seconds": round(seconds, 3), "clips_per_minute": per_minute,
            "backend": f"ray:{options.ray}" if options.ray else "local", "results": records}
