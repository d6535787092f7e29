"""One typed validation of every config field, for the CLI, TOML and SIGHUP alike."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from helpers import DaemonProcess, run_cli

from rvm_live.config import Config, config_from_mapping, load_toml
from rvm_live.errors import ConfigError


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("mask_threshold", "abc", "a number >= 0 and < 1"),
    ("log_level", 5, "one of debug, info, warning, error"),
    ("mirror", "yes", "true or false"),
    ("outputs", 5, "a list of output specs"),
    ("outputs", ["a.mp4", 3], "a list of output specs"),
    ("source", 5, "a non-empty string"),
    ("fps", float("inf"), "a number >= 0.1 and <= 1000"),
    ("fps", float("nan"), "a number >= 0.1 and <= 1000"),
    ("fps", 1e-300, "a number >= 0.1 and <= 1000"),
    ("fps", 0.01, "a number >= 0.1 and <= 1000"),
    ("fps", 1e6, "a number >= 0.1 and <= 1000"),
    ("width", 12.5, "an integer from 1"),
    ("width", True, "an integer from 1"),
    ("crf", 99, "an integer from 0 to 63"),
    ("downsample", 1e-9, "'auto' or a number from"),
    ("downsample", "half", "'auto' or a number from"),
    ("no_signal_timeout", -1, "a number >= 0"),
    ("bg_fallback", "nope", "a colour name"),
    ("bg_max_megapixels", 0, "a number > 0"),
    ("fourcc", "MJPEG", "four characters"),
    ("queue_size", 0, "an integer from 1 to 8"),
])
def test_every_bad_value_names_field_value_and_expectation(field, value, expected):
    with pytest.raises(ConfigError) as info:
        Config(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{field} = {value!r}: expected {expected}") and "\n" not in message


def test_good_values_are_normalised():
    config = Config(fps=30, log_level="DEBUG", outputs=["null"], downsample=1)
    assert (config.fps, config.log_level, config.outputs, config.downsample) == (30.0, "debug", ("null",), 1.0)


def test_ratio_floor_follows_the_frame_size():
    Config(width=176, height=144, downsample=0.25)
    with pytest.raises(ConfigError, match=r"downsample = 0.1: expected at least 0.222 for 176x144"):
        Config(width=176, height=144, downsample=0.1)


def test_toml_errors_name_the_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('mask_threshold = "abc"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: mask_threshold = 'abc': expected a number"):
        load_toml(cfg)
    with pytest.raises(ConfigError, match=r"^command line: mirror = 'yes'"):
        config_from_mapping({"mirror": "yes"}, origin="command line")


@pytest.mark.parametrize(("args", "culprit"), [
    (["--fps", "inf"], "fps = inf"),
    (["--fps", "1e-300"], "fps = 1e-300: expected a number >= 0.1"),
    (["--downsample", "1e-9"], "downsample = 1e-09"),
    (["--log-level", "loud"], "--log-level"),
])
def test_cli_rejects_bad_values_in_one_line(args, culprit):
    proc = run_cli("--source", "demo", "-o", "null", *args)
    assert proc.returncode == 2 and culprit in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("line", ['mask_threshold = "abc"', "log_level = 5", 'mirror = "yes"', "outputs = 5",
                                  "source = 5"])
def test_bad_toml_values_are_one_line_at_start(tmp_path, line):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(line + "\n")
    proc = run_cli("--config", str(cfg))
    assert proc.returncode == 2 and "bad.toml: " + line.split(" ")[0] in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ratio_too_small_for_the_source_is_refused(carphone_path, official_onnx_path):
    proc = run_cli("--source", str(carphone_path), "-o", "null", "--downsample", "0.1")
    assert proc.returncode == 2 and "downsample = 0.1: expected at least 0.222 for 176x144" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_bad_sighup_config_keeps_the_daemon_running(tmp_path, carphone_path, official_onnx_path):
    cfg = tmp_path / "live.toml"
    cfg.write_text(f'source = "{carphone_path}"\nrealtime = true\nloop = true\noutputs = ["null"]\n')
    with DaemonProcess("--config", str(cfg)) as daemon:
        cfg.write_text(cfg.read_text() + 'mask_threshold = "abc"\n')
        daemon.proc.send_signal(signal.SIGHUP)
        before = daemon.get("/stats")["frames_out"]
        deadline = time.monotonic() + 30
        while daemon.get("/stats")["frames_out"] <= before + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert daemon.proc.poll() is None and daemon.get("/stats")["frames_out"] > before + 5
        assert daemon.stop() == 0
    assert f"SIGHUP: {cfg}: mask_threshold = 'abc': expected a number" in daemon.stderr
    assert "Traceback" not in daemon.stderr


def two_streams(cfg, clip, bg_a, bg_b):
    cfg.write_text(f'outputs = ["null"]\nrealtime = true\nloop = true\n'
                   f'[[streams]]\nid = "a"\nsource = "{clip}"\nbg = "{bg_a}"\n'
                   f'[[streams]]\nid = "b"\nsource = "{clip}"\nbg = "{bg_b}"\n')


@pytest.mark.slow
def test_a_sighup_is_applied_to_every_stream_or_to_none(tmp_path, carphone_path, official_onnx_path):
    cfg = tmp_path / "two.toml"
    two_streams(cfg, carphone_path, "green", "blue")
    with DaemonProcess("--config", str(cfg)) as daemon:
        two_streams(cfg, carphone_path, "red", tmp_path / "missing.png")  # a's is good, b's is missing
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "SIGHUP" not in daemon.stderr and time.monotonic() < deadline:
            daemon.stderr += daemon.proc.stderr.readline()
        streams = daemon.get("/stats")["streams"]
        assert (streams["a"]["background"], streams["b"]["background"]) == ("green", "blue")
        assert daemon.stop() == 0
    assert "SIGHUP: stream b: background file" in daemon.stderr and "missing.png" in daemon.stderr
    assert "keeping the current settings" in daemon.stderr and "Traceback" not in daemon.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["bg", "source", "udp-port"])
def test_a_bad_part_of_stream_b_is_named_at_start(tmp_path, carphone_path, official_onnx_path, fault):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        b_source = {"bg": carphone_path, "source": tmp_path / "missing.mp4",
                    "udp-port": f"udp://127.0.0.1:{taken.getsockname()[1]}"}[fault]
        cfg = tmp_path / "two.toml"
        cfg.write_text(f'outputs = ["null"]\n[[streams]]\nid = "a"\nsource = "{carphone_path}"\n'
                       f'[[streams]]\nid = "b"\nsource = "{b_source}"\n'
                       + ('bg = "no-such-bg.png"\n' if fault == "bg" else ""))
        proc = run_cli("--config", str(cfg))
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("rvm-live: error: stream b: "), error
    assert {"bg": "no-such-bg.png", "source": "missing.mp4: no such file",
            "udp-port": "cannot listen on port"}[fault] in error
