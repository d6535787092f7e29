"""The ``rvm-live`` command as a user runs it: real process, exit codes, one-line errors, signals, presets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from media import decode_file

from rvm_live.cli import ConfigSource, summary_line
from rvm_live.config import Config, load_toml, preset_names
from rvm_live.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def assets_cached(official_onnx_path, carphone_path):
    """The subprocesses run offline: make sure the official weights and the demo clip are cached first."""


@pytest.mark.slow
def test_demo_job_writes_file_and_stats(tmp_path):
    stats_path = tmp_path / "stats.json"
    proc = run_cli("--source", "demo", "-o", "demo.mp4", "--side-by-side", "--max-frames", "24",
                    "--stats-json", str(stats_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frames = decode_file(tmp_path / "demo.mp4")
    assert len(frames) == 24 and frames[0].shape == (144, 352, 3)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_in"] == stats["frames_out"] == 24
    assert set(stats["latency_ms"]) == {"p50", "p95", "max"} and stats["latency_ms"]["p50"] > 0
    assert stats["backbone"] == "mobilenetv3" and stats["device"] == "cpu" and stats["downsample_ratio"] == 1.0
    assert stats["fps_out"] > 0 and stats["frames_dropped"] == 0


def test_summary_counts_add_up():
    # the run: one frame dropped by the output after it was matted was counted in "out" and "dropped"
    stats = {"frames_in": 600, "frames_out": 467, "frames_dropped": 134, "fps_out": 29.94,
             "sinks": {"vcam": {"dropped": 1}}}
    assert summary_line(stats) == ("frames in 600, out 467, dropped 133 before inference, 1 dropped at outputs "
                                   "after matting; 29.9 fps")
    stopped = {"frames_in": 50, "frames_out": 46, "frames_dropped": 2, "fps_out": 10.0, "sinks": {"a.mp4": {}}}
    assert summary_line(stopped) == ("frames in 50, out 46, dropped 2 before inference, 2 still queued at the "
                                     "stop; 10.0 fps")
    two = {"frames_in": 20, "frames_out": 18, "frames_dropped": 3, "fps_out": 5.0,
           "streams": {"a": {"sinks": {"null": {"dropped": 1}}}, "b": {"sinks": {"null": {"dropped": 0}}}}}
    assert summary_line(two).startswith("frames in 20, out 18, dropped 2 before inference, 1 dropped at outputs")


@pytest.mark.slow
def test_auto_engine_runs_openvino_fp32_on_the_fast_stage_for_a_file_job(tmp_path):
    """A file job on the CPU runs OpenVINO in fp32 with the fast stage (the measured fastest at the official
    model's fp32 result); ``--bf16`` (a torch precision) makes auto pick torch."""
    proc = run_cli("--source", "demo", "-o", "null", "--max-frames", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(openvino runtime, fast full-resolution stage)" in proc.stderr, proc.stderr
    proc = run_cli("--source", "demo", "-o", "null", "--max-frames", "3", "--bf16", cwd=tmp_path)
    assert proc.returncode == 0 and "(torch runtime, bf16 low-resolution part, exact" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_bf16_runs_the_torch_file_job_in_bf16_and_is_refused_where_it_cannot_apply(tmp_path):
    """``--bf16`` reaches the engine: the file job's frames differ from fp32's (a few levels, not a different
    picture), the log says so; another engine named with it is refused in one line before the model loads."""
    outs = {}
    for flags in ([], ["--bf16"]):
        out = tmp_path / f"out{len(flags)}.mkv"
        proc = run_cli("--source", "demo", "-o", str(out), "--max-frames", "6", "--crf", "0", "--engine", "torch",
                       *flags, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert ("bf16 low-resolution part" in proc.stderr) == bool(flags), proc.stderr
        outs[bool(flags)] = np.stack(decode_file(out)).astype(int)
    diff = np.abs(outs[True] - outs[False])
    assert 0 < diff.mean() < 3
    proc = run_cli("--source", "demo", "--realtime", "-o", "null", "--engine", "openvino", "--bf16", "--max-frames",
                   "2", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("rvm-live: error: bf16: runs the torch engine on the CPU")


@pytest.mark.parametrize(("args", "culprit", "code"), [
    (["--bogus-flag"], "--bogus-flag", 2),
    (["--bg", "notacolour", "-o", "x.mp4"], "notacolour", 2),
    (["--source", "missing.mp4", "-o", "x.mp4"], "missing.mp4", 1),
    (["-o", "out.xyz"], ".xyz", 2),
    (["-o", "nodir/out.mp4", "--max-frames", "2"], "nodir", 1),
    (["--config", "nosuch.toml"], "nosuch.toml", 2),
    (["--downsample", "2"], "downsample", 2),
    (["--backbone", "vgg"], "vgg", 2),
    (["--weights", "nothere.pth", "-o", "x.mp4"], "nothere.pth", 1),
    (["--source", "ftp://example.invalid/x", "-o", "x.mp4"], "ftp", 2),
])
@pytest.mark.slow
def test_bad_input_is_one_line_naming_the_culprit(tmp_path, args, culprit, code):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and culprit in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("live", [False, True])
def test_missing_onnx_weights_is_one_line(tmp_path, live):
    realtime = ["--realtime"] if live else []  # live: the fast full-resolution path loads the export itself
    proc = run_cli("--weights", str(tmp_path / "nonexistent.onnx"), *realtime, "--max-frames", "2", "-o", "null",
                    cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"rvm-live: error: weights file not found: {tmp_path / 'nonexistent.onnx'}"


@pytest.mark.slow
def test_corrupt_file_is_named(tmp_path, carphone_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(carphone_path.read_bytes()[:2000] + os.urandom(5000))
    proc = run_cli("--source", str(corrupt), "-o", "x.mp4", cwd=tmp_path)
    assert proc.returncode != 0 and "corrupt.mp4" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_config_key_is_named(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('bg = "green"\nbackgroud = "red"\n')
    proc = run_cli("--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2 and "backgroud" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_during_a_file_job_leaves_a_playable_file(tmp_path, carphone_path):
    out, stats_path = tmp_path / "long.mp4", tmp_path / "stats.json"
    env = {**os.environ, "RVM_LIVE_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rvm_live", "--source", str(carphone_path), "--loop", "-o",
                             str(out), "--stats-json", str(stats_path), "--log-level", "debug"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:  # wait until frames are being written
            if "libx264" in line:
                break
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        proc.wait(timeout=30)
        stop_seconds = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0
    frames = decode_file(out)
    assert len(frames) > 0
    stats = json.loads(stats_path.read_text())
    assert stats["frames_out"] >= len(frames) > 0
    print(f"stopped {stop_seconds:.2f} s after SIGTERM")  # reported, not asserted: timing lives in benchmarks


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    config = load_toml(name)
    assert isinstance(config, Config)
    from rvm_live.compositing.backgrounds import check_background
    from rvm_live.config import stream_configs

    for _, stream in stream_configs(config):  # a preset may describe several streams
        assert stream.outputs
        check_background(stream.bg)


def test_required_presets_exist():
    assert {"default", "zoom-720p", "obs-1080p", "cpu-lite", "file-hq"} <= set(preset_names())
    zoom = load_toml("zoom-720p")
    assert (zoom.width, zoom.height, zoom.fps, zoom.outputs) == (1280, 720, 30, ("vcam",))


def test_flags_override_the_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('bg = "blue"\nmax_frames = 5\noutputs = ["a.mp4"]\n')
    source = ConfigSource(["--config", str(cfg), "--bg", "red", "--camera", "2", "-o", "b.mp4", "-o", "null"])
    config = source.load()
    assert source.path == str(cfg)
    assert (config.bg, config.max_frames, config.source, config.outputs) == ("red", 5, "camera:2", ("b.mp4", "null"))
    bad = tmp_path / "x.toml"
    bad.write_text("nope = 1\n")
    with pytest.raises(ConfigError, match="'nope'"):
        load_toml(bad)


def test_devices_and_doctor_run():
    devices = run_cli("devices")
    assert devices.returncode == 0 and "cameras" in devices.stdout and "virtual cameras" in devices.stdout
    doctor = run_cli("doctor")
    assert "Traceback" not in doctor.stderr
    # one [ok]/[FAIL] line per check; the exit status says whether any failed (no v4l2loopback on CI: it does)
    checks = [line for line in doctor.stdout.splitlines() if line.startswith(("[ok] ", "[FAIL] "))]
    assert any("v4l2loopback module loaded" in line for line in checks), doctor.stdout
    failed = [line for line in checks if line.startswith("[FAIL] ")]
    assert doctor.returncode == (1 if failed else 0), doctor.stdout
    # the module's line fails exactly when the module is not loaded, and a missing module or device comes with
    # the exact fix line
    loaded = Path("/sys/module/v4l2loopback").is_dir()
    assert (f"[{'ok' if loaded else 'FAIL'}] v4l2loopback module loaded") in checks, doctor.stdout
    needs_module = any("v4l2loopback module loaded" in line or "loopback devices present" in line for line in failed)
    assert ("fix: sudo modprobe v4l2loopback devices=1 exclusive_caps=1" in doctor.stdout) == needs_module


@pytest.mark.parametrize("command", ["devices", "doctor"])
def test_helper_subcommands_print_help_instead_of_running(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: rvm-live {command}")
    assert "cameras:" not in proc.stdout and "[ok]" not in proc.stdout and "[FAIL]" not in proc.stdout
    unknown = run_cli(command, "--bogus")
    assert unknown.returncode == 2 and "--bogus" in unknown.stderr and "Traceback" not in unknown.stderr


def test_version_is_the_package_version():
    from rvm_live import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"rvm-live {__version__}"


def test_every_flag_has_a_description():
    from rvm_live.cli import build_parser

    undescribed = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and not a.help]
    assert undescribed == []


def test_an_unknown_preset_lists_the_shipped_ones(tmp_path):
    proc = run_cli("--config", "defualt", cwd=tmp_path)
    assert proc.returncode == 2 and "defualt" in proc.stderr and all(n in proc.stderr for n in preset_names())


@pytest.mark.slow
def test_sighup_rereads_the_config_and_control_api_reports_it(tmp_path, carphone_path):
    import urllib.request

    from media import free_port

    cfg = tmp_path / "live.toml"
    cfg.write_text(f'source = "{carphone_path}"\nrealtime = true\nloop = true\noutputs = ["null"]\nbg = "green"\n')
    port = free_port()
    env = {**os.environ, "RVM_LIVE_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rvm_live", "--config", str(cfg), "--control", f"127.0.0.1:{port}"],
                            stderr=subprocess.PIPE, text=True, env=env)

    def stats():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:
            return json.loads(resp.read())

    try:
        for line in proc.stderr:
            if "control API" in line:
                break
        assert stats()["background"] == "green"
        cfg.write_text(cfg.read_text().replace('bg = "green"', 'bg = "#ff0000"'))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (stats()["background"] != "#ff0000" or stats()["frames_out"] == 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stats()["background"] == "#ff0000" and stats()["frames_out"] > 0
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_offline_with_an_empty_cache_names_what_is_missing(tmp_path, carphone_path):
    env = {**os.environ, "RVM_LIVE_CACHE": str(tmp_path / "empty")}
    env.pop("RVM_LIVE_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "rvm_live", "--offline", "--engine", "torch", "--source",
                           str(carphone_path), "-o", str(tmp_path / "x.mp4")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 1 and "offline" in proc.stderr and "rvm_mobilenetv3.pth" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.mp4").exists()


def test_reloading_the_config_keeps_the_command_line_on_top(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('bg = "green"\nmirror = true\n')
    source = ConfigSource(["--config", str(cfg), "--bg", "red", "--no-mirror"])
    assert (source.load().bg, source.load().mirror) == ("red", False)
    cfg.write_text('bg = "blue"\nmirror = true\nmask_threshold = 0.5\n')
    reloaded = source.load()
    assert (reloaded.bg, reloaded.mirror, reloaded.mask_threshold) == ("red", False, 0.5)


@pytest.mark.slow
def test_unwritable_stats_json_fails_the_run(tmp_path):
    proc = run_cli("--source", "demo", "-o", "null", "--max-frames", "2", "--stats-json",
                    str(tmp_path / "missing-dir" / "s.json"), cwd=tmp_path)
    assert proc.returncode == 1 and "stats JSON" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("weights", "says"), [
    ("junk.pth", "junk.pth: not a weights file torch can read (UnpicklingError: Weights only load failed)"),
    ("junk.onnx", "junk.onnx: not an ONNX model"),
    ("/nonexistent.onnx", "weights file not found: /nonexistent.onnx"),
    (".", "is a directory"),
])
def test_bad_weights_are_one_line(tmp_path, weights, says):
    for name in ("junk.pth", "junk.onnx"):
        # the same junk every run: random bytes made torch fail in different ways from run to run
        (tmp_path / name).write_bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    proc = run_cli("--source", "demo", "-o", "null", "--weights", weights, cwd=tmp_path)
    assert proc.returncode == 1 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("source", "says"), [("DIR", "is a directory, not a video file"),
                                              ("/dev/zero", "/dev/zero: is a device, not a video file"),
                                              ("missing.mp4", "missing.mp4: no such file")])
def test_a_source_that_is_not_a_file_says_what_it_is(tmp_path, source, says):
    proc = run_cli("--source", str(tmp_path) if source == "DIR" else source, "-o", "null", cwd=tmp_path)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
