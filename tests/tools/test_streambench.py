"""The multi-stream benchmark runs the real daemon and real separate processes and reports both layouts."""

from __future__ import annotations

import pytest
from helpers import MS_PER_FRAME

from rvm_live.tools import streambench
from rvm_live.tools.streambench import format_stream_report, run_stream_bench

FPS = 30.0  # the clip's rate: played --realtime, no stream can go faster


@pytest.mark.slow
def test_stream_bench_reports_both_layouts(monkeypatch):
    # the separate processes must be up (torch imported, the model loaded) before they are told to stop, or
    # they die before writing their stats: a warm-up that covers a child's start on a busy two-core machine
    monkeypatch.setattr(streambench, "WARMUP_S", 15.0)
    report = run_stream_bench([2], width=176, height=144, fps=FPS, seconds=3.0, engine="onnxruntime")
    (row,) = report["rows"]
    assert row["streams"] == 2
    daemon, processes = row["daemon"], row["processes"]
    assert processes["processes_ok"] == 2
    for layout in (daemon, processes):
        # frames were made, and no more than two real-time streams can give (slack for the short window)
        assert 0 < layout["total_fps"] <= 2 * FPS * 1.5, layout
        assert MS_PER_FRAME[0] <= layout["p95_ms"] <= MS_PER_FRAME[1], layout  # capture -> output, in ms
    assert 1 <= daemon["mean_batch"] <= 2  # two streams: at most both in one network call
    assert row["throughput_ratio"] == round(daemon["total_fps"] / processes["total_fps"], 2)
    assert report["settings"]["engine"] == "onnxruntime" and report["settings"]["fps"] == FPS
    table = format_stream_report(report)
    assert f"| 2 | {daemon['total_fps']} |" in table and str(processes["total_fps"]) in table
