"""The benchmark: runs on real frames and reports every section, as a table and as JSON."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MS_PER_FRAME, assert_plausible_ms, assert_timed_row

from rvm_live.config import ENGINES
from rvm_live.engine.loading import pick_engine
from rvm_live.tools import bench
from rvm_live.tools.feedback import load_report, load_warning


@pytest.fixture(scope="module")
def report():
    return bench.run_bench(width=96, height=64, frames=6, threads=1)


def test_report_has_plausible_model_and_onnxruntime_numbers(report):
    for section in ("model", "onnxruntime"):
        assert_timed_row(report[section], 6)
    assert report["onnxruntime"]["available"] is True
    assert report["ratio_vs_onnxruntime"] == pytest.approx(report["model"]["fps"] / report["onnxruntime"]["fps"],
                                                           abs=0.001)
    assert report["settings"]["engine"] in ENGINES
    assert report["settings"]["threads"] == 1 and report["settings"]["downsample_ratio"] == 1.0
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]


def test_end_to_end_runs_the_pipeline_on_a_file(report):
    e2e = report["end_to_end"]
    assert e2e["available"] is True, e2e
    assert e2e["frames_out"] == report["settings"]["frames"] + report["settings"]["warmup"]
    assert_plausible_ms(e2e["latency_ms"])  # capture -> output, frame by frame
    assert 1000 / MS_PER_FRAME[1] <= e2e["fps"] <= 1000 / MS_PER_FRAME[0]
    assert e2e["engine"] in ENGINES


def test_frames_are_the_demo_clip_at_the_requested_size_looped():
    frames = bench.bench_frames(80, 48, 130)  # the clip has 120 frames
    assert len(frames) == 130 and frames[0].shape == (48, 80, 3) and frames[0].dtype.name == "uint8"
    assert (frames[120] == frames[0]).all() and not (frames[1] == frames[0]).all()


def test_main_prints_json_with_skipped_sections(capsys):
    code = bench.main(["--width", "64", "--height", "48", "--frames", "3", "--threads", "1", "--json",
                       "--no-e2e", "--no-onnx", "--downsample", "0.5"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert_timed_row(out["model"], 3)
    assert out["settings"]["downsample_ratio"] == 0.5
    assert out["onnxruntime"] == {"available": False, "reason": "skipped (--no-onnx)"}
    assert out["end_to_end"]["available"] is False
    assert "ratio_vs_onnxruntime" not in out


def test_report_names_the_engines_auto_picks_and_the_load(report):
    auto = report["settings"]["auto_engine"]
    # live CPU sources: the export's network half (OpenVINO bf16 where the CPU has it, else onnxruntime)
    # file jobs: OpenVINO in fp32 on the fast stage (the openvino package is a base dependency)
    assert auto["live"] in ENGINES and auto["live"] != "torch" and auto["file"] == "openvino"
    assert auto["live"] == pick_engine("auto", backbone="mobilenetv3", device=torch.device("cpu"))
    assert report["end_to_end"]["engine"] == "openvino"  # a file job
    assert set(report["load"]) == {"before", "after", "cores", "busy"}
    text = bench.format_report(report)
    assert f"--engine auto picks {auto['live']} for live sources and openvino for file jobs" in text
    assert "end-to-end (openvino)" in text and "can exceed the model's" in text


def test_a_busy_machine_is_warned_about():
    assert "the machine was busy" in load_warning(load_report(50.0, 50.0))
    quiet = load_report(0.0, 1.0, own_cores=1.0)  # the load we made ourselves is not a busy machine
    assert not quiet["busy"] and load_warning(quiet) is None


@pytest.mark.slow
def test_progress_goes_to_stderr_while_it_runs(capsys):
    assert bench.main(["--width", "64", "--height", "48", "--frames", "3", "--threads", "1", "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays the report alone
    lines = captured.err.splitlines()
    assert lines[0].startswith("rvm-live bench: mobilenetv3 64x48: loading")
    assert any("timing block 1/" in line for line in lines) and any("end-to-end" in line for line in lines)


@pytest.mark.slow
def test_main_prints_a_table(capsys):
    assert bench.main(["--width", "64", "--height", "48", "--frames", "3", "--threads", "1", "--no-e2e"]) == 0
    out = capsys.readouterr().out
    live = bench.auto_engines("mobilenetv3", torch.device("cpu"), None)["live"]
    # the model row times the exact network: auto's live pick, or onnxruntime where that pick (OpenVINO) runs only
    # the fast stage
    model = "onnxruntime" if live.startswith("openvino") else live
    assert f"model ({model} engine)" in out and "model (torch engine)" in out
    assert "onnxruntime (official)" in out and "ours / onnxruntime" in out and "torch engine" in out


@pytest.mark.slow
def test_onnxruntime_engine_is_timed_as_the_model(capsys):
    report = bench.run_bench(width=64, height=48, frames=3, threads=1, engine="onnxruntime", end_to_end=False)
    assert report["settings"]["engine"] == "onnxruntime"
    assert_timed_row(report["model"], 3)
    assert_timed_row(report["model_torch"], 3)
    assert report["torch_ratio_vs_onnxruntime"] == pytest.approx(
        report["model_torch"]["fps"] / report["onnxruntime"]["fps"], abs=0.001)


@pytest.mark.parametrize(("argv", "message"), [(["--width", "0"], "width must be a positive integer"),
                                                (["--frames", "-1"], "frames must be a positive integer"),
                                                (["--width", "16", "--height", "16"], "too small")])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert bench.main([*argv, "--no-e2e", "--no-onnx"]) == 2
    assert message in capsys.readouterr().err


def test_bad_downsample_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        bench.main(["--downsample", "2"])
    assert exc.value.code == 2


def test_resnet50_weights_file_runs_without_an_onnx_comparison(tmp_path):
    import torch

    from rvm_live.model.network import MattingNetwork

    torch.manual_seed(0)
    path = tmp_path / "random_resnet50.pth"
    torch.save(MattingNetwork("resnet50").state_dict(), path)
    report = bench.run_bench(width=64, height=48, frames=3, threads=1, backbone="resnet50", weights=str(path),
                             end_to_end=False)
    assert_timed_row(report["model"], 3)
    assert report["onnxruntime"] == {"available": False, "reason": "no official ONNX export mirrored for resnet50"}
