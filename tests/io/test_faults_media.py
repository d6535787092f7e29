"""Media faults: truncated inputs, crash-safe .part files, interrupted jobs, atomic stats."""

from __future__ import annotations

import json
import logging
import signal
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import DaemonProcess, start_cli, write_frames
from media import decode_file, wait_until

from rvm_live.io.sources.stream import StreamSource


def write_noise(path, *, codec: str = "libx264", container_options: dict[str, str] | None = None) -> None:
    """60 frames of 64x64 noise at 30 fps: every frame costs bytes, so half the file holds about half of them."""
    noise = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), np.uint8) for i in range(60)]
    write_frames(path, noise, rate=30, codec=codec, container_options=container_options)


def assert_truncation_is_said(path, caplog) -> None:
    """Whole, ``path`` reads its 60 frames quietly; cut in half, it reads fewer and says how many of the 60."""
    assert read_all(StreamSource(str(path))) == 60 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    caplog.clear()
    n = read_all(StreamSource(str(path)))
    assert 0 < n < 60
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path}: ended after {n} of its 60 declared frames (truncated or damaged)"]


def read_all(source) -> int:
    source.open()
    n = 0
    try:
        while source.read() is not None:
            n += 1
    finally:
        source.close()
    return n


def test_a_truncated_file_warns_with_its_declared_length(tmp_path, caplog):
    path = tmp_path / "cut.mp4"
    write_noise(path, container_options={"movflags": "faststart"})
    assert_truncation_is_said(path, caplog)


def wait_for_output(proc) -> None:
    for line in proc.stderr:
        if "output " in line and " fps" in line:
            return


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm"])
@pytest.mark.slow
def test_a_killed_job_loses_at_most_its_last_seconds(tmp_path, carphone_path, official_onnx_path, suffix):
    """SIGKILL, no chance to finalise anything: the ``.part`` plays, and holds every frame but the last
    fragment or cluster (a second) and what the encoder still held."""
    out = tmp_path / f"out{suffix}"
    part = tmp_path / f"out{suffix}.part"
    with DaemonProcess("--source", str(carphone_path), "--loop", "-o", str(out)) as daemon:
        def written() -> int:
            return daemon.get("/stats")["sinks"][str(out)]["frames"]

        wait_until(lambda: written() >= 120, 180, "120 frames handed to the output")
        handed = written()
        daemon.proc.kill()
        daemon.proc.wait(30)
    assert part.exists() and not out.exists()
    decoded = len(decode_file(part))
    assert decoded >= handed - 60, f"{decoded} frames play of the {handed} handed over before the kill"


@pytest.mark.slow
def test_a_file_job_stopped_early_keeps_its_part_and_the_earlier_file(tmp_path, carphone_path,
                                                                        official_onnx_path):
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    out.write_bytes(b"an earlier, complete result")
    proc = start_cli("--source", str(carphone_path), "--realtime", "-o", str(out), "--stats-json", str(stats))
    try:
        wait_for_output(proc)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert out.read_bytes() == b"an earlier, complete result"
    frames = decode_file(tmp_path / "out.mp4.part")
    assert 0 < len(frames) < 120
    assert "stopped before the end of its source" in err and "out.mp4.part" in err
    assert json.loads(stats.read_text())["frames_out"] >= len(frames)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _phone_clip(path, degrees=90, hflip=False, vflip=False):
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for _ in range(3):
            image = np.zeros((32, 64, 3), np.uint8)
            image[:, :8] = (255, 0, 0)  # a red band down the stored picture's left edge
            image[:4, 8:] = (0, 255, 0)  # and a green one along its top
            c.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        c.mux(stream.encode(None))


def _first_frame(path):
    source = StreamSource(str(path))
    source.open()
    try:
        return source.read()
    finally:
        source.close()


def test_the_display_matrix_is_honoured(tmp_path):
    _phone_clip(tmp_path / "phone.mp4", 90)  # shown turned a quarter counter-clockwise, as phones record
    frame = _first_frame(tmp_path / "phone.mp4")
    assert frame.shape == (64, 32, 3)  # portrait
    assert frame[-4:, :, 0].mean() > 200 and frame[:48, :, 0].mean() < 30  # the left edge is now the bottom


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
@pytest.mark.parametrize(("hflip", "vflip"), [(True, False), (False, True), (False, False)])
def test_every_orientation_a_camera_writes_is_shown_as_players_show_it(tmp_path, degrees, hflip, vflip):
    """All eight EXIF orientations (turns, and mirrors after the turn), against the stored picture turned
    and mirrored by numpy."""
    path = tmp_path / "clip.mp4"
    _phone_clip(path, degrees, hflip, vflip)
    with av.open(str(path)) as c:
        stored = next(c.decode(video=0)).to_ndarray(format="rgb24")
    expected = np.rot90(stored, degrees // 90)
    expected = expected[::-1 if vflip else 1, ::-1 if hflip else 1]
    np.testing.assert_array_equal(_first_frame(path), expected)


def test_an_implausible_frame_rate_is_replaced_and_said(tmp_path, caplog):
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=1000)  # what a guess from two timestamps can come out as
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for _ in range(5):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 64, 3), np.uint8), format="rgb24")))
        c.mux(stream.encode(None))
    caplog.set_level("WARNING", logger="rvm_live")
    for hint, want in ((None, 30.0), (25.0, 25.0)):
        source = StreamSource(str(path), fps=hint)
        source.open()
        source.close()
        assert source.fps == want
    assert f"{path}: frame rate 1000 is not plausible; taking 30 (set --fps to choose)" in caplog.text


def test_variable_frame_rate_input_keeps_its_timing(tmp_path, carphone_frames, mobilenet):
    """A VFR file (frames 20 ms and 63 ms apart, 1.66 s in all) comes out as long as it went in, every frame
    at its own time, not retimed to a constant rate."""
    from helpers import RecordingSink

    from rvm_live.config import Config
    from rvm_live.engine import Engine
    from rvm_live.io.sinks.stream import StreamSink
    from rvm_live.runtime.daemon import Daemon

    src, out = tmp_path / "vfr.mp4", tmp_path / "out.mp4"
    times_ms = np.cumsum([0] + [20 if i % 2 else 63 for i in range(39)])
    with av.open(str(src), "w") as container:
        stream = container.add_stream("libx264", rate=50)
        stream.width, stream.height, stream.pix_fmt = 176, 144, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for t, image in zip(times_ms, carphone_frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(t), stream.codec_context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    config = Config(source=str(src), outputs=(str(out),))
    Daemon(config, engine=Engine("mobilenetv3", model=mobilenet, device="cpu"),
             sinks=[RecordingSink(), StreamSink(str(out), config)]).run()
    with av.open(str(src)) as c:
        source_times = [f.time for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        out_times = [f.time for f in c.decode(video=0)]
    assert len(out_times) == len(source_times) == 40
    span_in, span_out = source_times[-1] - source_times[0], out_times[-1] - out_times[0]
    assert abs(span_out - span_in) < 0.05, (span_in, span_out)  # retimed, it would be 39/rate
    gaps = np.diff(out_times)
    assert gaps.max() > 2 * gaps.min()  # still variable


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_a_truncated_matroska_file_warns_with_its_declared_length(tmp_path, caplog, suffix):
    path = tmp_path / f"cut{suffix}"
    # Matroska keeps no frame count, and its duration only in the container
    write_noise(path, codec="libx264" if suffix == ".mkv" else "libvpx-vp9")
    assert_truncation_is_said(path, caplog)
