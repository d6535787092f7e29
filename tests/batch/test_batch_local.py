"""The embedded default: the same outputs as single runs, a bad clip failing alone, resume after a kill, and a
killed worker's task retried. Every fault is real: a damaged file, SIGKILL to the job or to one worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import index_clip
from helpers import corrupt_clip
from media import decode_file, mean_abs_error, wait_until

pytestmark = pytest.mark.slow

ENCODER_NOISE = 1.0  # mean |Δ| per 8-bit channel two encodes of the same pictures may differ by


def assert_same_pictures(output, reference):
    got, want = decode_file(output), decode_file(reference)
    assert len(got) == len(want)
    assert max(mean_abs_error(a, b) for a, b in zip(got, want)) < ENCODER_NOISE


def batch_process(*args: str) -> subprocess.Popen:
    """``rvm-live batch ARGS`` in its own process group, stderr piped (the test reads the worker pids there)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "rvm_live", "batch", *args], stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_local_outputs_match_single_runs_and_a_corrupt_clip_fails_alone(library, tmp_path):
    folder, references = library
    bad = corrupt_clip(tmp_path / "damaged.mp4")
    out = tmp_path / "out"
    job = batch_process(str(folder), bad, "-o", str(out), "--workers", "2", "-q")
    _, err = job.communicate(timeout=600)
    assert job.returncode == 1
    summary = json.loads((out / "batch-summary.json").read_text())
    by_output = {Path(r["output"]).relative_to(out).as_posix(): r for r in summary["results"]}
    for name, reference in references.items():
        assert by_output[name]["status"] == "done" and by_output[name]["frames"] == 40
        assert by_output[name]["fps"] > 0
        assert_same_pictures(out / name, reference)
    failed = by_output["damaged.mp4"]
    assert failed["status"] == "failed" and "damaged.mp4" in failed["error"] and "decod" in failed["error"]
    assert (summary["done"], summary["failed"]) == (2, 1)
    assert re.search(r"rvm-live: batch: .*damaged\.mp4.*decod", err)
    assert "Traceback" not in err


def test_a_killed_job_resumes_skipping_finished_outputs_and_redoing_the_part(tmp_path):
    clips = [index_clip(tmp_path / "in" / f"c{i}.mp4", 150) for i in range(3)]
    out = tmp_path / "out"
    job = batch_process(str(tmp_path / "in"), "-o", str(out), "--workers", "1")
    try:
        wait_until(lambda: len(list(out.glob("*.mp4"))) >= 1 and len(list(out.glob("*.mp4.part"))) >= 1, 300,
                   "one output finished and the next one under way")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the job and its worker, with no chance to clean up
        job.wait()
    finished = sorted(out.glob("*.mp4"))
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    assert not (out / "batch-summary.json").exists()
    rerun = batch_process(str(tmp_path / "in"), "-o", str(out), "--workers", "1", "-q")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    summary = json.loads((out / "batch-summary.json").read_text())
    statuses = {Path(r["output"]).name: r["status"] for r in summary["results"]}
    assert {statuses[p.name] for p in finished} == {"skipped"}
    assert sorted(statuses.values()).count("done") == 3 - len(finished)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finished)  # not written again
    assert not list(out.glob("*.part"))
    for clip in clips:
        assert len(decode_file(out / Path(clip).name)) == 150


def test_a_worker_killed_mid_task_has_its_task_retried(tmp_path):
    index_clip(tmp_path / "in" / "long.mp4", 300)
    out = tmp_path / "out"
    job = batch_process(str(tmp_path / "in"), "-o", str(out), "--workers", "1", "--log-level", "info")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("started on worker" in line for line in lines) and (out / "long.mp4.part").exists(),
                   300, "the clip under way")
        pid = int(re.search(r"pid (\d+)", next(line for line in lines if "started on worker" in line)).group(1))
        os.kill(pid, signal.SIGKILL)
        assert job.wait(timeout=600) == 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    reader.join(5)
    log = "".join(lines)
    assert "worker died (exit code -9); retrying" in log
    assert len(re.findall(r"long\.mp4: started on worker", log)) == 2
    summary = json.loads((out / "batch-summary.json").read_text())
    assert summary["results"][0]["status"] == "done" and summary["results"][0]["frames"] == 300
    assert len(decode_file(out / "long.mp4")) == 300
