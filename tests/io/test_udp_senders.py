"""A UDP source follows whatever its port receives: a new sender the demuxer cannot follow, junk datagrams,
and a backlog after a stall (a live source drops stale frames rather than deliver them late)."""

from __future__ import annotations

import os
import socket
import time

import pytest
from helpers import DaemonProcess
from media import Peer, counter_of, free_port, send, send_counter, send_ts, wait_until

from rvm_live.errors import SourceNotReady
from rvm_live.io.sources.datagram import Datagrams
from rvm_live.io.sources.stream import StreamSource


def open_when_up(source: StreamSource, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            return source.open()
        except SourceNotReady:
            if time.monotonic() > deadline:
                raise


@pytest.mark.slow
@pytest.mark.parametrize(("codec", "muxer"), [
    ("libx264", {"mpegts_start_pid": "0x300", "mpegts_pmt_start_pid": "0x1400", "mpegts_service_id": "7"}),
    ("mpeg2video", {}),
], ids=["other-pids", "other-codec"])
def test_a_new_sender_the_demuxer_cannot_follow_is_reopened(official_onnx_path, codec, muxer):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with DaemonProcess("--source", url, "-o", "null") as daemon:
        with Peer(send, url + "?pkt_size=1316", (200, 40, 40), (176, 144), 60.0):
            wait_until(lambda: daemon.get("/stats")["frames_out"] >= 5, 60, "frames from the first sender")
        # the next sender starts at once: no silence long enough to end the first stream
        with Peer(send_ts, url + "?pkt_size=1316", (176, 144), 60.0, codec, muxer):
            before = daemon.get("/stats")["frames_out"]
            wait_until(lambda: daemon.get("/stats")["frames_out"] >= before + 20, 30, "frames from the new sender")
            assert daemon.get("/health")["source"] == "up"
        assert daemon.stop() == 0
    assert "source lost" in daemon.stderr and "source back" in daemon.stderr and "Traceback" not in daemon.stderr


@pytest.mark.slow
def test_junk_datagrams_before_the_stream_do_not_freeze_it(official_onnx_path):
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    with DaemonProcess("--source", url, "-o", "null") as daemon, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
        for _ in range(50):
            junk.sendto(os.urandom(1000), ("127.0.0.1", port))
        with Peer(send, url + "?pkt_size=1316", (200, 40, 40), (176, 144), 60.0):
            for _ in range(20):  # and more junk beside the real sender
                junk.sendto(os.urandom(700), ("127.0.0.1", port))
                time.sleep(0.05)
            wait_until(lambda: daemon.get("/stats")["frames_out"] >= 30, 20, "the stream despite the junk")
        assert daemon.stop() == 0
    assert "not MPEG-TS" in daemon.stderr


@pytest.mark.slow
def test_a_stalled_reader_gets_fresh_frames_not_the_backlog():
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    source = StreamSource(url)
    try:
        with Peer(send_counter, url + "?pkt_size=1316", (176, 144), 60.0):
            open_when_up(source)
            for _ in range(15):
                last = counter_of(source.read())
            time.sleep(3.0)  # the capture thread stalls (a slow machine, a GC pause): 180 frames pile up
            after = [counter_of(source.read()) for _ in range(5)]
        # a backlog would hand over last+1, last+2, ...; fresh frames are far ahead. (One frame decoded across the
        # dropped ones may carry a colour that is no counter at all on a loaded machine, so five are read.)
        assert max(after) >= last + 45 and not all(last < c < last + 45 for c in after), (last, after)
        assert source.stale_frames >= 30
    finally:
        source.close()


def test_data_that_never_yields_a_picture_ends_the_demuxer_with_a_reason():
    port = free_port(socket.SOCK_DGRAM)
    datagrams = Datagrams(f"udp://127.0.0.1:{port}")
    datagrams.start()
    try:
        reader = datagrams.reader(silence=5.0, cancel=None, picture_wait=0.5)
        reader.picture_seen()  # opened: from now on data must bring pictures
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(500):  # 10 s of TS packets whose PID nobody decodes
                sender.sendto(b"\x47" + bytes(187), ("127.0.0.1", port))
                time.sleep(0.02)
                data = reader.read(65536)
                if not data:
                    break
        assert data == b"" and "packets arrive but no picture for 0.5 s" in reader.failure
    finally:
        datagrams.close()
