"""The multi-stream benchmark runs the real daemon and real separate processes and reports both layouts."""

from __future__ import annotations

from rvm_live.tools.streambench import format_stream_report, run_stream_bench


def test_stream_bench_reports_both_layouts():
    report = run_stream_bench([2], width=176, height=144, seconds=2.0, engine="onnxruntime")
    (row,) = report["rows"]
    assert row["streams"] == 2
    assert row["daemon"]["total_fps"] > 0 and row["daemon"]["mean_batch"] >= 1
    assert row["processes"]["processes_ok"] == 2 and row["processes"]["total_fps"] > 0
    assert row["throughput_ratio"] is not None
    assert "| 2 |" in format_stream_report(report)
