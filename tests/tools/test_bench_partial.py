"""The benchmark keeps every number it measured when a later part fails (a GPU run must not lose them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_timed_row

from rvm_live.tools import bench, gpu_check


def test_a_failing_end_to_end_run_keeps_the_model_numbers(monkeypatch):
    from rvm_live.runtime.daemon import Daemon

    def exploding_run(self):
        raise RuntimeError("the pipeline exploded")

    monkeypatch.setattr(Daemon, "run", exploding_run)
    report = bench.run_bench(width=64, height=48, frames=3, threads=1, onnx=False)
    assert_timed_row(report["model"], 3)
    assert report["end_to_end"] == {"available": False, "reason": "failed: RuntimeError: the pipeline exploded"}
    assert "unavailable: failed: RuntimeError" in bench.format_report(report)


@pytest.mark.slow
def test_a_failing_engine_is_reported_and_the_others_are_timed(monkeypatch):
    real_step = bench.OrtRunner.step
    calls = []

    def failing_after_two(self, frame: np.ndarray) -> None:
        calls.append(1)
        if len(calls) > 2:
            raise MemoryError("out of memory in onnxruntime")
        real_step(self, frame)

    monkeypatch.setattr(bench.OrtRunner, "step", failing_after_two)
    report = bench.run_bench(width=64, height=48, frames=4, threads=1, end_to_end=False)
    assert report["onnxruntime"] == {"available": False, "reason": "MemoryError: out of memory in onnxruntime"}
    assert_timed_row(report["model"], 4)
    assert "ratio_vs_onnxruntime" not in report


def test_gpu_check_saves_each_step_and_records_a_failure(tmp_path):
    out = tmp_path / "check.json"
    report: dict = {"runs": {}}

    def save() -> None:
        out.write_text(json.dumps(report))

    gpu_check._guarded(report["runs"], "first", lambda: {"fps": 1.0}, save)
    assert json.loads(out.read_text())["runs"]["first"]["fps"] == 1.0  # on disk before the next step

    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    gpu_check._guarded(report["runs"], "second", broken, save)
    saved = json.loads(out.read_text())["runs"]
    assert saved["first"]["fps"] == 1.0 and saved["second"]["error"].startswith("RuntimeError: CUDA error")
