"""``--ray`` on a real local Ray cluster (``ray.init(num_cpus=2)``): the same outputs as single runs, a bad clip
failing alone, and an actor killed mid-clip (SIGKILL to its process) having its task retried."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from pathlib import Path

import pytest
from conftest import index_clip
from helpers import corrupt_clip, run_cli
from media import decode_file, free_port, wait_until
from test_batch_local import assert_same_pictures

from rvm_live.batch.job import JobOptions, run_job
from rvm_live.config import Config

ray = pytest.importorskip("ray", reason="Ray is the optional 'cluster' extra")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class PidWatcher(logging.Handler):
    """Collects the worker pids the job logs as tasks start (``started on NODE (pid N)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"started on .* \(pid (\d+)\)", record.getMessage())
        if found:
            self.pids.append(int(found.group(1)))


def test_ray_outputs_match_single_runs_and_a_corrupt_clip_fails_alone(cluster, library, tmp_path):
    folder, references = library
    bad = corrupt_clip(tmp_path / "damaged.mp4")
    out = tmp_path / "out"
    bars = []

    def progress(stats, *, total):
        bars.append((stats, total))
        return None

    summary = run_job(Config(), JobOptions(inputs=(str(folder), bad), outdir=str(out), ray="auto"),
                      show_progress=progress)
    [(stats, total)] = bars
    assert total == 120  # three 40-frame headers; the bar counts frames of every clip
    assert stats()["frames_out"] >= 80  # the actors' counts reached the driver
    by_output = {Path(r["output"]).relative_to(out).as_posix(): r for r in summary["results"]}
    for name, reference in references.items():
        assert by_output[name]["status"] == "done" and by_output[name]["frames"] == 40
        assert_same_pictures(out / name, reference)
    failed = by_output["damaged.mp4"]
    assert failed["status"] == "failed" and "damaged.mp4" in failed["error"] and "decod" in failed["error"]
    assert summary["backend"] == "ray:auto" and (summary["done"], summary["failed"]) == (2, 1)


def test_an_actor_killed_mid_clip_has_its_task_retried(cluster, tmp_path):
    index_clip(tmp_path / "in" / "long.mp4", 300)
    out = tmp_path / "out"
    watcher = PidWatcher()
    logger = logging.getLogger("rvm_live.batch.ray_backend")
    logger.addHandler(watcher)
    logger.setLevel(logging.INFO)
    killed: list[int] = []

    def kill_once_under_way() -> None:
        wait_until(lambda: watcher.pids and (out / "long.mp4.part").exists(), 300, "the clip under way")
        killed.append(watcher.pids[0])
        os.kill(watcher.pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_once_under_way, daemon=True)
    killer.start()
    try:
        summary = run_job(Config(), JobOptions(inputs=(str(tmp_path / "in"),), outdir=str(out), ray="auto"))
    finally:
        logger.removeHandler(watcher)
    killer.join(5)
    assert killed, "the worker was never killed"
    assert len(watcher.pids) >= 2 and watcher.pids[-1] != killed[0]  # the task ran again, on a new actor
    assert summary["results"][0]["status"] == "done" and summary["results"][0]["frames"] == 300
    assert len(decode_file(out / "long.mp4")) == 300


def test_an_address_where_no_cluster_answers_is_one_line_at_once(tmp_path):
    clip = index_clip(tmp_path / "c.mp4", 3)
    done = run_cli("batch", clip, "-o", str(tmp_path / "out"), "--ray", f"127.0.0.1:{free_port()}", timeout=60,
                   offline=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("rvm-live: error: --ray 127.0.0.1:")
    assert "no Ray cluster answers there" in done.stderr and "Traceback" not in done.stderr
