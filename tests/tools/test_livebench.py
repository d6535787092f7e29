"""``rvm-live bench --live``: the real pipeline on a realtime source; behaviour only (speed is in BENCHMARKS.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import MS_PER_FRAME, assert_plausible_ms

from rvm_live.config import ENGINES
from rvm_live.engine.loading import pick_engine
from rvm_live.tools.livebench import (
    CLIP_FRAMES,
    CpuHog,
    fidelity,
    format_live_report,
    ratio_timeline,
    run_live_bench,
    steady_fps,
)


@pytest.mark.slow
def test_live_bench_reports_fps_latency_ratio_and_fidelity():
    fps, seconds = 15, 4.5
    # fidelity over a whole pass of the clip: a run shorter than one pass makes no frame outside it, so every
    # frame that comes out is compared (the first few alone may all be dropped on a busy machine)
    report = run_live_bench(width=160, height=96, fps=fps, seconds=seconds, fullres="fast",
                            fidelity_frames=CLIP_FRAMES)
    assert 0 < report["frames_out"] <= report["frames_in"] <= CLIP_FRAMES
    assert report["frames_dropped"] >= 0
    assert report["settings"]["fullres"] == "fast" and report["settings"]["hog"] is False
    assert_plausible_ms(report["latency_ms"])
    # a realtime source at 15 fps: no more out than it gives (slack for the short sampling window)
    assert report["fps_out"] is not None and 0 < report["fps_out"] <= fps * 1.5
    assert report["ratio_over_time"][0][1] == 1.0  # auto ratio at this size
    assert 0 < report["cores_used"] <= (os.cpu_count() or 1) * 1.1  # CPU time per wall second: at most all cores
    assert MS_PER_FRAME[0] <= report["cpu_ms_per_frame_out"] <= MS_PER_FRAME[1]
    engine_used = report["settings"]["engine_used"]
    # auto on a live CPU source: the export's network half (OpenVINO bf16 where the CPU has it, else onnxruntime)
    assert report["settings"]["engine"] == "auto" and engine_used in ENGINES and engine_used != "torch"
    assert engine_used == pick_engine("auto", backbone="mobilenetv3", device=torch.device("cpu"))
    assert set(report["load"]) == {"before", "after", "cores", "busy"}
    text = format_live_report(report)
    assert f"engine auto ({engine_used})" in text and "% of pixels off by more than 0.5" in text
    fid = report["fidelity"]
    # every frame written to the output is compared (a live output may lose its last queued frames at the stop)
    assert 0 < fid["frames"] <= report["frames_out"], fid
    assert fid["mean_abs_alpha"] < 0.05  # same ratio as the fixed-quality run; only dropped frames differ
    assert 0 <= fid["mean_abs_alpha"] <= fid["max_abs_alpha"] <= 1 and 0 <= fid["share_over_half"] <= 1


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
@pytest.mark.slow
def test_bad_live_flags(flag):
    result = subprocess.run([sys.executable, "-m", "rvm_live", "bench", "--live", flag],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
