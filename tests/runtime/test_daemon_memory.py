"""The live daemon frees each decoded frame as it goes, across a source outage too.

Every frame a UDP camera delivered stayed alive until a garbage collection (a reference cycle through its side
data), with a swscale pool of a thread per core: an idle one-stream daemon swung between 45 and 700 threads,
and the chaos soak's memory stepped up as those bursts spread over glibc's arenas. Counted with the cyclic
collector off, so only what reference counting frees is freed.
"""

from __future__ import annotations

import gc
import os
import socket

import pytest
from helpers import RecordingSink
from media import Peer, free_port, send, wait_until

from rvm_live.config import Config
from rvm_live.engine import Engine
from rvm_live.runtime.daemon import Daemon

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def frames_alive() -> int:
    return sum(type(o).__name__ == "VideoFrame" for o in gc.get_objects())


@pytest.mark.slow
def test_a_live_daemon_keeps_no_decoded_frame_or_thread_per_frame(mobilenet):
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    sink = RecordingSink("out", live=True)
    daemon = Daemon(Config(source=url), engine=Engine("mobilenetv3", model=mobilenet, device="cpu"),
                    sinks=[sink])
    gc.collect()
    gc.disable()
    try:
        with Peer(send, url + "?pkt_size=1316", (200, 40, 40), (176, 144), 60.0) as sender:
            sender.result(60)
            daemon.start()
            wait_until(lambda: len(sink.frames) >= 20, 60, "the first frames")
            frames, threads = frames_alive(), native_threads()
            wait_until(lambda: len(sink.frames) >= 70, 60, "50 more frames")
        # an outage, and another sender (the source reopens)
        wait_until(lambda: daemon.stats()["source_outages"] >= 1, 30, "the outage")
        with Peer(send, url + "?pkt_size=1316", (40, 200, 40), (176, 144), 60.0) as sender:
            sender.result(60)
            count = len(sink.frames)
            wait_until(lambda: len(sink.frames) >= count + 50, 60, "50 frames from the new sender")
            # the old code: +1 frame and +2 threads (two cores) for every frame read, 100 or more of each
            assert frames_alive() <= frames + 4  # a first frame per open, what the decoder holds
            assert native_threads() <= threads + 8
    finally:
        gc.enable()
        daemon.stop()
        daemon.wait(10)
        daemon.close()
