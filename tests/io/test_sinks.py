"""Encoded outputs on real media: files decoded back, RTSP/RTMP pushed to listening peer processes,
unreachable servers, the null sink and the registry."""

from __future__ import annotations

import platform
import socket
import time
from fractions import Fraction

import av
import media
import numpy as np
import pytest

from rvm_live.config import Config
from rvm_live.errors import ConfigError, SinkError
from rvm_live.frame import Frame
from rvm_live.io.sinks.base import Sink, create_sink
from rvm_live.io.sinks.null import NullSink
from rvm_live.io.sinks.stream import StreamSink, encoder_works, frame_rate, pick_h264_encoder


def frames_of(images: np.ndarray) -> list[Frame]:
    return [Frame(i, time.monotonic_ns(), "test", img) for i, img in enumerate(images)]


def with_alpha(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGBA frames with a horizontal alpha ramp (0 at the left edge, 255 at the right)."""
    n, h, w, _ = images.shape
    alpha = np.broadcast_to(np.linspace(0, 255, w).round().astype(np.uint8), (n, h, w))
    return np.concatenate([images, alpha[..., None]], axis=3), np.ascontiguousarray(alpha)


def write_file(path, frames: list[Frame], fps: float = 29.97, config: Config | None = None) -> StreamSink:
    sink = create_sink(str(path), config or Config())
    assert isinstance(sink, StreamSink) and isinstance(sink, Sink) and not sink.live
    sink.open(frames[0].width, frames[0].height, fps)
    for frame in frames:
        sink.write(frame)
    sink.close()
    return sink


# --- files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_h264_file_round_trip(tmp_path, carphone_frames, suffix):
    path = tmp_path / f"out{suffix}"
    sink = write_file(path, frames_of(carphone_frames[:40]))
    assert not sink.accepts_alpha
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == Fraction(30000, 1001)  # plays at the source rate
    decoded = media.decode_file(path)
    assert len(decoded) == 40 and decoded[0].shape == (144, 176, 3)
    for i in (0, 20, 39):
        assert media.mean_abs_error(decoded[i], carphone_frames[i]) < 6


@pytest.mark.parametrize(("suffix", "codec", "tolerance"), [(".mov", "prores", 3), (".webm", "vp9", 8)])
def test_alpha_file_keeps_alpha(tmp_path, carphone_frames, suffix, codec, tolerance):
    rgba, alpha = with_alpha(carphone_frames[:12])
    path = tmp_path / f"cutout{suffix}"
    sink = write_file(path, frames_of(rgba))
    assert sink.accepts_alpha
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == codec
    decoded = media.decode_file(path, fmt="rgba")
    assert len(decoded) == 12
    for i in (0, 11):
        assert media.mean_abs_error(decoded[i][..., 3], alpha[i]) < tolerance
        opaque = alpha[i] > 250  # colour only means something where the pixel is visible
        assert media.mean_abs_error(decoded[i][..., :3][opaque], carphone_frames[i][opaque]) < tolerance


def test_rgb_frames_to_an_alpha_file_are_opaque(tmp_path, carphone_frames):
    path = tmp_path / "opaque.mov"
    write_file(path, frames_of(carphone_frames[:3]))
    decoded = media.decode_file(path, fmt="rgba")
    assert min(int(f[..., 3].min()) for f in decoded) >= 254


def test_rgba_frames_to_h264_drop_alpha(tmp_path, carphone_frames):
    rgba, _ = with_alpha(carphone_frames[:5])
    path = tmp_path / "flat.mp4"
    write_file(path, frames_of(rgba))
    decoded = media.decode_file(path)
    assert len(decoded) == 5
    assert media.mean_abs_error(decoded[4], carphone_frames[4]) < 6  # alpha ignored, not multiplied


def test_stopped_early_file_is_playable(tmp_path, carphone_frames):
    path = tmp_path / "early.mp4"
    sink = create_sink(str(path), Config())
    sink.open(176, 144, 30)
    for frame in frames_of(carphone_frames[:3]):
        sink.write(frame)
    sink.close()  # what the SIGTERM path does
    sink.close()
    assert len(media.decode_file(path)) == 3


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_file_with_no_frames_leaves_no_broken_file_and_keeps_an_earlier_one(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    sink = create_sink(str(path), Config())
    sink.open(176, 144, 30)
    assert (tmp_path / f"empty{suffix}.part").exists()  # written under a temporary name
    sink.close()
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"an earlier run's output")
    sink = create_sink(str(path), Config())
    sink.open(176, 144, 30)
    sink.close()  # this run failed before its first frame: the earlier file is untouched
    assert path.read_bytes() == b"an earlier run's output"


def test_reopen_rewrites_the_file(tmp_path, carphone_frames):
    path = tmp_path / "again.mp4"
    sink = create_sink(str(path), Config())
    for n in (7, 4):
        sink.open(176, 144, 25)
        for frame in frames_of(carphone_frames[:n]):
            sink.write(frame)
        sink.close()
    assert len(media.decode_file(path)) == 4


def test_odd_sizes_are_trimmed_to_even(tmp_path, carphone_frames):
    path = tmp_path / "odd.mp4"
    odd = np.ascontiguousarray(carphone_frames[:3, :143, :175])
    write_file(path, frames_of(odd))
    decoded = media.decode_file(path)
    assert decoded[0].shape == (142, 174, 3)
    assert media.mean_abs_error(decoded[0], odd[0, :142, :174]) < 6


def test_frame_of_another_size_is_scaled_not_fatal(tmp_path, carphone_frames, caplog):
    out = tmp_path / "size.mp4"
    sink = create_sink(str(out), Config())
    sink.open(176, 144, 30)
    sink.write(Frame(0, 0, "t", carphone_frames[0]))
    for i in range(1, 4):  # the source switched to half size mid-recording
        sink.write(Frame(i, 0, "t", np.ascontiguousarray(carphone_frames[i][::2, ::2])))
    sink.close()
    frames = media.decode_file(out)
    assert len(frames) == 4 and all(f.shape == (144, 176, 3) for f in frames)
    assert sum("scaling them to 176x144" in r.getMessage() for r in caplog.records) == 1


def test_file_timestamps_keep_the_gaps_of_dropped_frames(tmp_path, carphone_frames):
    out = tmp_path / "gaps.mp4"
    sink = create_sink(str(out), Config())
    sink.open(176, 144, 30)
    for index in (0, 1, 2, 6):  # frames 3-5 were dropped upstream (a live source, slow inference)
        sink.write(Frame(index, 0, "t", carphone_frames[index]))
    sink.close()
    import av

    with av.open(str(out)) as container:
        times = [round(float(f.time) * 30) for f in container.decode(video=0)]
    assert times == [0, 1, 2, 6]


def test_unknown_suffix_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\.avi"):
        create_sink(str(tmp_path / "out.avi"), Config())


def test_missing_output_directory_is_named(tmp_path):
    sink = create_sink(str(tmp_path / "no" / "such" / "out.mp4"), Config())
    with pytest.raises(SinkError, match=str(tmp_path / "no" / "such")):
        sink.open(176, 144, 30)


def test_forced_encoder(tmp_path, carphone_frames):
    path = tmp_path / "mpeg4.mkv"
    write_file(path, frames_of(carphone_frames[:10]), config=Config(encoder="mpeg4"))
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    assert len(media.decode_file(path)) == 10
    with pytest.raises(ConfigError, match="no_such_encoder"):
        create_sink(str(tmp_path / "x.mp4"), Config(encoder="no_such_encoder"))


def test_auto_encoder_only_picks_nvenc_when_it_works():
    chosen = pick_h264_encoder("auto")
    assert chosen == ("h264_nvenc" if encoder_works("h264_nvenc") else "libx264")
    assert encoder_works("libx264")
    assert not encoder_works("no_such_encoder")


@pytest.mark.parametrize(
    ("fps", "rate"),
    [(29.97, Fraction(30000, 1001)), (30, Fraction(30)), (59.94, Fraction(60000, 1001)),
     (23.976, Fraction(24000, 1001)), (12.5, Fraction(25, 2)), (1, Fraction(1))],
)
def test_frame_rate(fps, rate):
    assert frame_rate(fps) == rate


# --- streams -------------------------------------------------------------------------------------------


def push_solid(sink: StreamSink, rgb: tuple[int, int, int], frames: int) -> int:
    """Write up to ``frames`` solid frames at ~30 fps; the peer leaving early ends it (SinkError)."""
    image = np.empty((144, 176, 3), np.uint8)
    image[:] = rgb
    sent = 0
    try:
        for i in range(frames):
            sink.write(Frame(i, time.monotonic_ns(), "test", image))
            sent += 1
            time.sleep(1 / 30)
    except SinkError:
        pass  # the receiver got what it wanted and hung up
    finally:
        sink.close()
    return sent


@pytest.mark.parametrize(
    ("scheme", "options", "fmt"),
    [("rtsp", {"rtsp_flags": "listen", "listen_timeout": "20", "timeout": "10000000"}, None),
     ("rtmp", {"listen": "1", "timeout": "20"}, "flv")],
)
@pytest.mark.slow
def test_stream_sink_reaches_a_listening_server(scheme, options, fmt):
    url = f"{scheme}://127.0.0.1:{media.free_port()}/live/cam"
    sink = StreamSink(url, Config())  # in-process: the daemon runs it in a writer process (IsolatedSink)
    assert sink.live and not sink.accepts_alpha
    with media.Peer(media.receive, url, options, fmt, 20) as peer:
        media.open_with_retry(sink, 176, 144, 30)  # refused until the peer listens, then connects
        push_solid(sink, (30, 60, 220), 90)
        report = peer.result(timeout=30)
    assert report["ok"], report
    assert report["count"] == 20 and report["shape"] == [144, 176, 3]
    assert np.abs(np.array(report["mean_rgb"]) - (30, 60, 220)).max() < 12


def test_udp_sink_to_a_receiver():
    url = f"udp://127.0.0.1:{media.free_port(socket.SOCK_DGRAM)}?pkt_size=1316"
    # The receiver binds the port; UDP has no handshake, so keep sending until it has its frames.
    with media.Peer(media.receive, url, {"timeout": "15000000"}, "mpegts", 10) as peer:
        sink = create_sink(url, Config())
        sink.open(176, 144, 30)
        image = np.empty((144, 176, 3), np.uint8)
        image[:] = (200, 30, 90)
        deadline = time.monotonic() + 20
        try:
            i = 0
            while peer.results.empty() and time.monotonic() < deadline:
                sink.write(Frame(i, time.monotonic_ns(), "test", image))
                i += 1
                time.sleep(1 / 30)
        finally:
            sink.close()
        report = peer.result(timeout=10)
    assert report["ok"], report
    assert report["count"] == 10 and report["shape"] == [144, 176, 3]
    assert np.abs(np.array(report["mean_rgb"]) - (200, 30, 90)).max() < 12


@pytest.mark.parametrize("scheme", ["rtsp", "rtmp", "srt"])
def test_unreachable_server_raises_sink_error(scheme):
    url = f"{scheme}://127.0.0.1:{media.free_port()}/live"
    # In a child process, so that a hang would fail this test instead of freezing the suite.
    with media.Peer(media.try_open_sink, url) as peer:
        report = peer.result(timeout=30)
    assert report["error"] == "SinkError", report
    assert url in report["message"]


# --- null and registry ---------------------------------------------------------------------------------


def test_null_sink_counts_frames(carphone_frames):
    sink = create_sink("null", Config())
    assert isinstance(sink, NullSink)
    sink.open(176, 144, 30)
    for frame in frames_of(carphone_frames[:25]):
        sink.write(frame)
    sink.write(Frame(0, 0, "t", np.zeros((10, 10, 3), np.uint8)))  # a source that changed size mid-run
    sink.close()
    sink.close()
    assert sink.frames == 26 and sink.last_latency_ms >= 0 and sink.size == (10, 10)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [("null", "NullSink"), ("vcam", "VcamSink"), ("vcam:/dev/video10", "VcamSink"), ("window", "WindowSink"),
     ("out.mp4", "StreamSink"), ("file:///tmp/x.webm", "StreamSink"), ("rtsp://127.0.0.1:8554/x", "IsolatedSink"),
     ("rtmp://h/app/key", "IsolatedSink"), ("srt://h:9000", "IsolatedSink"), ("udp://127.0.0.1:5000", "IsolatedSink")],
)
def test_registry(spec, kind):
    assert type(create_sink(spec, Config())).__name__ == kind


def test_unknown_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="gopher"):
        create_sink("gopher://host/x", Config())


# --- virtual camera ------------------------------------------------------------------------------------


def test_vcam_sends_rgb_frames_to_the_backend(fake_backends, carphone_frames):
    import pyvirtualcam

    from rvm_live.io.sinks.vcam import VcamSink

    sink = VcamSink("/dev/video9", backend="rvm-test-recorder")
    assert sink.live and not sink.accepts_alpha  # so the sink worker only ever hands it RGB
    rgba, _ = with_alpha(carphone_frames[:1])
    sink.open(176, 144, 29.97)
    for frame in frames_of(carphone_frames[:10]):
        sink.write(frame)
    with pytest.raises(SinkError, match=r"\(144, 176, 4\) uint8, camera opened for"):
        sink.write(Frame(0, 0, "t", rgba[0]))
    sink.close()
    sink.close()
    (backend,) = media.RecordingBackend.instances
    assert (backend.width, backend.height, backend.fps) == (176, 144, 29.97)
    assert backend.fourcc == pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    assert backend.device() == "/dev/video9" and backend.closed == 1
    assert len(backend.frames) == 10 and sink.frames_sent == 10
    np.testing.assert_array_equal(np.stack(backend.frames), carphone_frames[:10])  # exact
    assert backend.sent_at == sorted(backend.sent_at)


def test_vcam_reopens_at_a_new_size(fake_backends, carphone_frames):
    from rvm_live.io.sinks.vcam import VcamSink

    sink = VcamSink(backend="rvm-test-recorder")
    sink.open(176, 144, 30)
    sink.write(frames_of(carphone_frames[:1])[0])
    small = np.ascontiguousarray(carphone_frames[:1, ::2, ::2])
    sink.open(88, 72, 30)
    sink.write(frames_of(small)[0])
    sink.close()
    first, second = media.RecordingBackend.instances
    assert first.closed == 1 and (second.width, second.height) == (88, 72)
    np.testing.assert_array_equal(second.frames[0], small[0])


def test_vcam_keeps_its_size_when_the_source_changes_size(fake_backends, caplog):
    from rvm_live.io.sinks.vcam import VcamSink

    sink = VcamSink(backend="rvm-test-recorder")
    sink.open(176, 144, 30)
    for size, level in (((144, 176), 10), ((360, 640), 200), ((72, 88), 90), ((72, 88), 91)):
        sink.write(Frame(0, 0, "t", np.full((*size, 3), level, np.uint8)))
    sink.close()
    (backend,) = media.RecordingBackend.instances  # never reopened: apps watching the device keep it
    assert [f.shape for f in backend.frames] == [(144, 176, 3)] * 4
    assert [int(f.mean()) for f in backend.frames] == [10, 200, 90, 91]
    resizes = [r.getMessage() for r in caplog.records if "scaling them" in r.getMessage()]
    assert resizes == ["output vcam: frames are now 640x360; scaling them to 176x144",
                       "output vcam: frames are now 88x72; scaling them to 176x144"]


def test_vcam_error_carries_the_fix_and_the_backend_error(fake_backends):
    from rvm_live.errors import VirtualCameraError
    from rvm_live.io.sinks.vcam import VcamSink

    sink = VcamSink("/dev/video42", backend="rvm-test-broken")
    with pytest.raises(VirtualCameraError) as info:
        sink.open(176, 144, 30)
    message = str(info.value)
    assert 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="rvm-live"' in message
    assert "OBS" in message and "Virtual Camera" in message
    assert "device /dev/video42 is busy" in message and "rvm-test-broken" in message
    assert isinstance(info.value, SinkError) and isinstance(info.value, OSError)


def test_vcam_without_any_device_explains_the_fix():
    from rvm_live.errors import VirtualCameraError
    from rvm_live.io.sinks.vcam import loopback_devices

    if loopback_devices():
        pytest.skip("this machine has a v4l2loopback device")
    sink = create_sink("vcam", Config())
    with pytest.raises(VirtualCameraError, match="modprobe v4l2loopback"):
        sink.open(176, 144, 30)


def test_vcam_factory_device():
    assert create_sink("vcam:/dev/video10", Config(vcam_device="/dev/video3")).device == "/dev/video10"
    assert create_sink("vcam", Config(vcam_device="/dev/video3")).device == "/dev/video3"
    assert create_sink("vcam", Config()).device is None


@pytest.mark.device
def test_real_loopback_device(carphone_frames):
    import cv2

    from rvm_live.io.sinks.vcam import loopback_devices

    devices = [d for d, _ in loopback_devices()]
    if not devices:
        pytest.skip("no v4l2loopback device (sudo modprobe v4l2loopback devices=1 exclusive_caps=1)")
    sink = create_sink(f"vcam:{devices[0]}", Config())
    sink.open(176, 144, 30)
    try:
        for frame in frames_of(carphone_frames[:5]):
            sink.write(frame)
        cap = cv2.VideoCapture(devices[0], cv2.CAP_V4L2)
        sink.write(frames_of(carphone_frames[5:6])[0])
        ok, bgr = cap.read()
        cap.release()
    finally:
        sink.close()
    assert ok and bgr.shape == (144, 176, 3)


def fake_sysfs(root, *, module: bool, virtual: bool, caps: str | None):
    """A /sys and /dev tree shaped like the kernel's, for doctor()."""
    sys_root, dev_root = root / "sys", root / "dev"
    where = "devices/virtual/video4linux/video7" if virtual else "devices/pci0000:00/usb1/video4linux/video7"
    (sys_root / where).mkdir(parents=True)
    (sys_root / where / "name").write_text("rvm-live\n")
    (sys_root / "class" / "video4linux").mkdir(parents=True)
    (sys_root / "class" / "video4linux" / "video7").symlink_to(sys_root / where)
    if module:
        (sys_root / "module" / "v4l2loopback" / "parameters").mkdir(parents=True)
        if caps is not None:
            (sys_root / "module" / "v4l2loopback" / "parameters" / "exclusive_caps").write_text(caps)
    dev_root.mkdir()
    (dev_root / "video7").write_bytes(b"")
    return sys_root, dev_root


def test_doctor_on_a_good_setup(tmp_path):
    from rvm_live.io.sinks.vcam import doctor, loopback_devices

    if platform.system() != "Linux":
        pytest.skip("the loopback checks are Linux-only")
    sys_root, dev_root = fake_sysfs(tmp_path, module=True, virtual=True, caps="Y\n")
    assert loopback_devices(sys_root) == [("/dev/video7", "rvm-live")]
    checks = {c.name: c for c in doctor(sys_root=sys_root, dev_root=dev_root)}
    assert all(c.ok for name, c in checks.items() if name != "pyvirtualcam backends"), checks
    assert "rvm-live" in checks["loopback devices present"].detail


def test_doctor_names_the_fix_when_the_module_is_missing(tmp_path):
    from rvm_live.io.sinks.vcam import MODPROBE_FIX, doctor

    if platform.system() != "Linux":
        pytest.skip("the loopback checks are Linux-only")
    sys_root, dev_root = fake_sysfs(tmp_path, module=False, virtual=False, caps=None)  # a real webcam only
    checks = {c.name: c for c in doctor(sys_root=sys_root, dev_root=dev_root)}
    assert not checks["v4l2loopback module loaded"].ok
    assert not checks["loopback devices present"].ok
    assert MODPROBE_FIX in checks["v4l2loopback module loaded"].fix
    sys_root, dev_root = fake_sysfs(tmp_path / "b", module=True, virtual=True, caps="N\n")
    checks = {c.name: c for c in doctor(sys_root=sys_root, dev_root=dev_root)}
    assert not checks["exclusive_caps=1 (needed by Chrome/WebRTC)"].ok


# --- preview window ------------------------------------------------------------------------------------


@pytest.mark.parametrize("display", [None, ":97"])
def test_window_without_a_display_is_a_sink_error(monkeypatch, display):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", display)  # set, but no X server behind it
    sink = create_sink("window", Config())
    assert sink.accepts_alpha
    with pytest.raises(SinkError, match="no display"):
        sink.open(176, 144, 30)
    sink.close()


def test_checkerboard_shows_through_transparent_pixels():
    from rvm_live.io.sinks.window import checkerboard, flatten_rgba

    board = checkerboard(32, 32)
    image = np.zeros((32, 32, 4), np.uint8)
    image[..., 0] = 250
    image[:, 16:, 3] = 255
    flat = flatten_rgba(image, board)
    np.testing.assert_array_equal(flat[:, 16:], np.broadcast_to([250, 0, 0], (32, 16, 3)))
    np.testing.assert_array_equal(flat[:, :16], board[:, :16].astype(np.uint8))
    assert len(np.unique(flat[:, :16, 1])) == 2  # both checker shades visible


@pytest.fixture
def xvfb_display():
    import os
    import shutil
    import subprocess

    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    for number in range(90, 110):
        if not os.path.exists(f"/tmp/.X11-unix/X{number}") and not os.path.exists(f"/tmp/.X{number}-lock"):
            break
    server = subprocess.Popen(["Xvfb", f":{number}", "-nolisten", "tcp", "-screen", "0", "640x480x24"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}") and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


def test_window_under_xvfb(monkeypatch, xvfb_display, carphone_frames):
    from rvm_live.io.sinks.window import display_problem

    monkeypatch.setenv("DISPLAY", xvfb_display)
    assert display_problem() is None
    sink = create_sink("window:rvm-live test", Config())
    sink.open(176, 144, 30)
    try:
        rgba, _ = with_alpha(carphone_frames[:10])
        for frame in frames_of(rgba):
            sink.write(frame)
    finally:
        sink.close()
        sink.close()
    assert sink.frames_shown == 10 and not sink.closed_by_user
