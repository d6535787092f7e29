"""Decoders get threads by frame size: FFmpeg's default (a pool of one per core, plus one, for every decoder
opened) left hundreds of idle threads in a many-core daemon decoding small frames."""

from __future__ import annotations

import os

import torch
from helpers import write_clip

from rvm_live.compositing.backgrounds import VideoBackground
from rvm_live.io._av import MAX_DECODER_THREADS, decoder_threads
from rvm_live.io.sources.stream import StreamSource


def test_small_live_frames_are_decoded_on_one_thread(tmp_path):
    clip = write_clip(tmp_path / "small.mp4", n=5, size=64)
    source = StreamSource(clip, realtime=True)  # played live; a file job keeps FFmpeg's frame threading
    source.open()
    try:
        assert source.read() is not None
        assert source._container.streams.video[0].codec_context.thread_count == 1
    finally:
        source.close()
    with VideoBackground(clip, device="cpu", dtype=torch.float32) as bg:
        assert bg.for_frame(torch.zeros(1, 3, 64, 64)).shape[-2:] == (64, 64)


def test_larger_frames_get_threads_up_to_the_cores_and_a_cap():
    cores = len(os.sched_getaffinity(0))
    assert decoder_threads(176, 144) == decoder_threads(640, 360) == 1
    assert decoder_threads(1920, 1080) == min(9, cores, MAX_DECODER_THREADS)
    assert decoder_threads(7680, 4320) == min(cores, MAX_DECODER_THREADS)
