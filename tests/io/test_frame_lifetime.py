"""A decoded frame is freed as soon as it is converted, not left to the garbage collector.

Reading every frame's side data (for its display matrix) tied each frame into a reference cycle (PyAV's
SideDataContainer points back at its frame), and ``VideoFrame.to_ndarray`` gave each frame its own swscale
context with a pool of a thread per core. So every frame read, its picture buffer and two threads (on two
cores) stayed alive until a garbage collection: hundreds of idle threads in a daemon, and its memory spread
over glibc's per-thread arenas. The tests count objects and threads with the cyclic collector off, so only
what reference counting frees is freed, as it must be.
"""

from __future__ import annotations

import gc
import os

import av
import numpy as np
import pytest

from rvm_live.io._av import RgbConverter
from rvm_live.io.sources.stream import StreamSource

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")


def native_threads() -> int:
    """Threads of this process, Python's and native ones (FFmpeg's pools) alike."""
    return len(os.listdir("/proc/self/task"))


def frames_alive() -> int:
    """PyAV frames still alive (reachable, or garbage waiting for the collector)."""
    return sum(type(o).__name__ == "VideoFrame" for o in gc.get_objects())


class CollectorOff:
    """The cyclic garbage collector off for a block (on again after, whatever happens)."""

    def __enter__(self) -> CollectorOff:
        gc.collect()
        gc.disable()
        return self

    def __exit__(self, *exc: object) -> None:
        gc.enable()
        gc.collect()


def test_a_source_leaves_no_frame_to_the_garbage_collector(carphone_path):
    source = StreamSource(str(carphone_path), loop=True)
    source.open()
    try:
        with CollectorOff():
            assert source.read() is not None  # the first frame: its display matrix is read
            frames, threads = frames_alive(), native_threads()
            for _ in range(150):  # more than the clip: its loop (a seek back) included
                assert source.read() is not None
            assert frames_alive() <= frames + 2  # what the decoder holds between packets; was +150
            assert native_threads() <= threads + 1  # was +300 on two cores: a swscale pool per frame
    finally:
        source.close()


def test_the_display_matrix_is_read_again_after_a_reopen(tmp_path):
    from test_faults_media import _phone_clip

    path = tmp_path / "phone.mp4"
    _phone_clip(path, 90)
    source = StreamSource(str(path))
    try:
        for _ in range(2):  # the matrix is the stream's: read from the first frame of each open
            source.open()
            assert source.read().shape == (64, 32, 3)
            assert source.read().shape == (64, 32, 3)
    finally:
        source.close()


def test_converting_held_frames_starts_no_thread_pool(carphone_path, carphone_frames):
    """Frames a pipeline holds (a queue) keep whatever they own: to_ndarray's context and pool each."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("swscale starts no pool on one core")
    convert = RgbConverter()
    with av.open(str(carphone_path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        held, threads = [], native_threads()
        for index, frame in enumerate(container.decode(stream)):
            np.testing.assert_array_equal(convert(frame), carphone_frames[index])
            held.append(frame)
            if len(held) == 30:
                break
        assert native_threads() <= threads + 1  # to_ndarray(): +60, a pool of two per held frame
