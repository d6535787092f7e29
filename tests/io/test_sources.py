"""Sources on real media and real network peers: the carphone clip, UDP/MPEG-TS from a sender process,
webcams when present."""

from __future__ import annotations

import socket

import media
import numpy as np
import pytest

from rvm_live.config import Config
from rvm_live.errors import ConfigError, SourceError
from rvm_live.io.sources.base import Source, create_source
from rvm_live.io.sources.camera import CameraSource, list_cameras, parse_camera_spec
from rvm_live.io.sources.demo import DemoSource
from rvm_live.io.sources.stream import StreamSource


def read_all(source: Source, limit: int = 10_000) -> list[np.ndarray]:
    frames = []
    while len(frames) < limit:
        image = source.read()
        if image is None:
            break
        frames.append(image)
    return frames


# --- files -------------------------------------------------------------------------------------------


def test_file_source_reads_every_frame_of_the_clip(carphone_path, carphone_frames):
    source = create_source(str(carphone_path), Config())
    assert isinstance(source, StreamSource) and isinstance(source, Source)
    source.open()
    try:
        assert not source.live
        assert source.fps == pytest.approx(29.97, abs=0.01)
        frames = read_all(source)
        assert source.read() is None  # stays at the end
    finally:
        source.close()
        source.close()
    assert len(frames) == 120
    assert all(f.shape == (144, 176, 3) and f.dtype == np.uint8 for f in frames)
    np.testing.assert_array_equal(frames[0], carphone_frames[0])
    np.testing.assert_array_equal(frames[-1], carphone_frames[-1])


def test_file_url_prefix_is_the_same_file(carphone_path):
    source = create_source(f"file://{carphone_path}", Config())
    source.open()
    try:
        assert source.read().shape == (144, 176, 3)
    finally:
        source.close()


def test_loop_restarts_at_the_end(carphone_path, carphone_frames):
    source = create_source(str(carphone_path), Config(loop=True))
    source.open()
    try:
        frames = read_all(source, limit=250)
    finally:
        source.close()
    assert len(frames) == 250  # more than the clip's 120: it never reported an end
    np.testing.assert_array_equal(frames[120], carphone_frames[0])
    np.testing.assert_array_equal(frames[241], carphone_frames[1])


def test_realtime_file_is_live(carphone_path, carphone_frames):
    source = create_source(str(carphone_path), Config(realtime=True))
    assert source.live
    source.open()
    try:
        frames = read_all(source, limit=5)
    finally:
        source.close()
    np.testing.assert_array_equal(np.stack(frames), carphone_frames[:5])


def test_reopen_starts_again_from_the_first_frame(carphone_path, carphone_frames):
    source = create_source(str(carphone_path), Config())
    source.open()
    try:
        read_all(source, limit=30)
        source.open()  # what the pipeline does to restart a source
        np.testing.assert_array_equal(source.read(), carphone_frames[0])
    finally:
        source.close()


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.mp4"
    source = create_source(str(path), Config())
    with pytest.raises(SourceError, match="nope.mp4") as info:
        source.open()
    assert isinstance(info.value, OSError)
    assert "\n" not in str(info.value)


def test_corrupt_file_names_the_path(tmp_path, carphone_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="garbage.mp4"):
        create_source(str(garbage), Config()).open()
    # A clip cut short: the header survives, the frames don't.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(carphone_path.read_bytes()[:2000])
    with pytest.raises(SourceError, match="cut.mp4"):
        source = create_source(str(cut), Config())
        source.open()
        read_all(source)


def test_read_before_open_is_an_error(carphone_path):
    with pytest.raises(SourceError, match="before open"):
        create_source(str(carphone_path), Config()).read()


def test_demo_source_plays_the_carphone_clip(carphone_path, carphone_frames):
    source = create_source("demo", Config())
    assert isinstance(source, DemoSource) and not source.live
    source.open()
    try:
        frames = read_all(source)
    finally:
        source.close()
    assert len(frames) == 120
    np.testing.assert_array_equal(frames[60], carphone_frames[60])
    assert create_source("demo", Config(realtime=True)).live


# --- network -------------------------------------------------------------------------------------------


def test_udp_mpegts_round_trip_through_the_stream_source():
    url = f"udp://127.0.0.1:{media.free_port(socket.SOCK_DGRAM)}"
    source = StreamSource(url, open_timeout=60)
    assert source.live and isinstance(create_source(url, Config()), StreamSource)
    with media.Peer(media.send, url, (40, 200, 10), (176, 144), 30.0) as sender:
        source.open()  # blocks (bounded by the open timeout) until the sender's packets are probed
        try:
            frames = [source.read() for _ in range(15)]
        finally:
            sender.stop.set()
    try:
        assert source.fps == pytest.approx(30, abs=0.5)
        assert all(f is not None and f.shape == (144, 176, 3) for f in frames)
        assert np.abs(frames[-1].reshape(-1, 3).mean(0) - (40, 200, 10)).max() < 12
    finally:
        source.close()


@pytest.mark.slow
def test_silent_stream_raises_instead_of_hanging():
    url = f"udp://127.0.0.1:{media.free_port(socket.SOCK_DGRAM)}"
    source = StreamSource(url, open_timeout=1.5, read_timeout=1.5)
    with pytest.raises(SourceError, match=f"udp://127.0.0.1:{url.rsplit(':', 1)[1]}"):
        source.open()


def _datagrams(url):
    from rvm_live.io.sources.datagram import Datagrams

    receiver = Datagrams(url)
    receiver.start()
    return receiver


def test_the_udp_socket_buffers_while_nobody_reads_and_drops_the_oldest_when_full():
    port = media.free_port(socket.SOCK_DGRAM)
    receiver = _datagrams(f"udp://127.0.0.1:{port}?fifo_size=10")  # 10 TS packets: 1880 bytes
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(5):
                tx.sendto(bytes([i]) * 752, ("127.0.0.1", port))  # 4 TS packets each
        media.wait_until(lambda: receiver.dropped == 3 * 752, 10, "three datagrams dropped")
        assert receiver.take(10_000) == bytes([3]) * 752  # the oldest two left were dropped first
        assert receiver.take(100) == bytes([4]) * 100 and receiver.take(10_000) == bytes([4]) * 652
        assert receiver.take(10_000) == b"" and not receiver.wait(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(b"late", ("127.0.0.1", port))
        assert receiver.wait(10)
        receiver.drop_stale(older_than=0.0)  # what open() does with data that waited too long
        assert receiver.take(100) == b""
    finally:
        receiver.close()


def test_a_multicast_udp_source_joins_its_group():
    group, port = "239.255.71.3", media.free_port(socket.SOCK_DGRAM)
    receiver = _datagrams(f"udp://{group}:{port}?localaddr=127.0.0.1")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:  # kept on the loopback interface
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            tx.sendto(b"to the group", (group, port))
        assert receiver.wait(10) and receiver.take(100) == b"to the group"
    finally:
        receiver.close()


def test_unreachable_rtsp_server_raises():
    url = f"rtsp://127.0.0.1:{media.free_port()}/live"
    with pytest.raises(SourceError, match="rtsp://127.0.0.1"):
        create_source(url, Config()).open()


# --- cameras -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "device"),
    [("camera", 0), ("camera:0", 0), ("camera:3", 3), ("camera:/dev/video2", "/dev/video2"),
     ("/dev/video7", "/dev/video7")],
)
def test_camera_spec_parsing(spec, device):
    assert parse_camera_spec(spec) == device
    source = create_source(spec, Config())
    assert isinstance(source, CameraSource) and source.live and source.device == device


@pytest.mark.parametrize("spec", ["camera:front", "camera:-1"])
def test_bad_camera_spec_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="camera"):
        parse_camera_spec(spec)


def test_bad_fourcc_is_a_config_error():
    with pytest.raises(ConfigError, match="MJPEG"):
        create_source("camera:0", Config(fourcc="MJPEG"))


def test_unopenable_camera_lists_the_ones_that_open():
    cameras = list_cameras()
    source = create_source("camera:63", Config())
    with pytest.raises(SourceError, match="available cameras") as info:
        source.open()
    message = str(info.value)
    assert "63" in message
    if cameras:
        assert all(c.spec in message for c in cameras)
    else:
        assert "none found" in message


@pytest.mark.device
def test_real_camera_delivers_rgb_frames():
    cameras = list_cameras()
    if not cameras:
        pytest.skip("no camera can be opened on this machine")
    source = create_source(cameras[0].spec, Config(width=640, height=480))
    source.open()
    try:
        image = source.read()
    finally:
        source.close()
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
