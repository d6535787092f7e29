"""``rvm-live bench --live``: the real pipeline on a realtime source; behaviour only (speed is in BENCHMARKS.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rvm_live.engine.loading import pick_engine
from rvm_live.tools.livebench import CpuHog, fidelity, format_live_report, ratio_timeline, run_live_bench, steady_fps


def test_live_bench_reports_fps_latency_ratio_and_fidelity():
    report = run_live_bench(width=160, height=96, fps=15, seconds=4.5, fullres="fast", fidelity_frames=4)
    assert report["frames_out"] > 0 and report["frames_in"] >= report["frames_out"]
    assert report["settings"]["fullres"] == "fast" and report["settings"]["hog"] is False
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]
    assert report["ratio_over_time"][0][1] == 1.0  # auto ratio at this size
    assert report["cores_used"] > 0 and report["cpu_ms_per_frame_out"] > 0
    live_auto = pick_engine("auto", backbone="mobilenetv3", device=torch.device("cpu"))  # openvino-bf16 or ort
    assert report["settings"]["engine"] == "auto" and report["settings"]["engine_used"] == live_auto
    assert set(report["load"]) == {"before", "after", "cores", "busy"}
    text = format_live_report(report)
    assert f"engine auto ({live_auto})" in text and "% of pixels off by more than 0.5" in text
    fid = report["fidelity"]
    if fid["frames"]:  # a frame among the first four came out (under heavy load all may be dropped)
        assert fid["mean_abs_alpha"] < 0.05  # same ratio as the fixed-quality run; only dropped frames differ


def test_cpu_hog_is_pinned_and_ends_with_the_block():
    with CpuHog(core=0) as hog:
        pid = hog.process.pid
        if hasattr(os, "sched_getaffinity"):
            assert os.sched_getaffinity(pid) == {0}
        assert hog.process.poll() is None
    assert hog.process.poll() is not None


def test_report_helpers():
    samples = [{"t": t, "frames_out": 30 * t, "ratio": 0.5 if t < 5 else 0.375} for t in range(10)]
    assert steady_fps(samples, warmup_s=3) == 30
    assert ratio_timeline(samples) == [(0, 0.5), (5, 0.375)]
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    assert fidelity({0: a, 7: a}, [b]) == {"frames": 1, "mean_abs_alpha": round(1 / 16, 5), "max_abs_alpha": 1.0,
                                           "share_over_half": 1 / 16}


def test_bad_live_arguments_are_one_line_errors():
    result = subprocess.run([sys.executable, "-m", "rvm_live", "bench", "--live", "--seconds", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "seconds must be more than" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--fullres=slow", "--fps=x"])
def test_bad_live_flags(flag):
    result = subprocess.run([sys.executable, "-m", "rvm_live", "bench", "--live", flag],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
