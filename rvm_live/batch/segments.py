"""Long clips in parallel: a segment's source (a time window of the clip, a warm-up early), the output that
drops the warm-up frames, and the lossless join of the segments' files.

RVM's recurrent state is what makes a clip hard to split: a segment that starts cold mattes its first
frames worse than a run that has seen the clip from its start. Starting W frames early and dropping them
lets the state converge first; BENCHMARKS.md has the seam error against W that the default comes from.
"""

from __future__ import annotations

import logging
import os
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import MediaError, one_line
from ..frame import Frame
from ..io._av import av
from ..io.sinks.base import Sink, SinkBase
from ..io.sinks.stream import file_plan
from ..io.sources.stream import StreamSource
from .plan import Window

log = logging.getLogger(__name__)


class SegmentSource(StreamSource):
    """A clip file read from ``window.warm_start`` up to (not including) ``window.end``, by timestamp.

    Seeks to the keyframe before the warm-up and decodes forward from there, so a segment late in a long
    clip does not decode everything before it."""

    def __init__(self, spec: str, window: Window, *, fps: float | None = None) -> None:
        super().__init__(spec, fps=fps)
        self.window = window

    def open(self) -> None:
        """Open the file and go to the keyframe at or before the warm-up's first frame."""
        super().open()
        # StreamSource keeps its container private; a window is a file read from another start, so this
        # subclass reaches in rather than widening the source protocol for it
        self._declared = 0  # a window ends before its file does: that is no truncation to warn about
        if self.window.warm_start is None or self._container is None:
            return
        stream = self._container.streams.video[0]
        try:
            self._container.seek(int(self.window.warm_start / stream.time_base), stream=stream, backward=True)
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(f"{self.target}: cannot seek to {self.window.warm_start:.3f} s: {one_line(exc)}") from exc
        self._frames = self._container.decode(stream)

    def read(self) -> np.ndarray | None:
        """The next frame inside the window; None past its end."""
        start, end = self.window.warm_start, self.window.end
        while True:
            image = super().read()
            if image is None:
                return None
            t = self.last_pts
            if t is None:
                raise MediaError(f"{self.target}: a frame without a timestamp cannot be placed in a segment")
            if start is not None and t < start:
                continue  # between the keyframe the seek landed on and the warm-up
            if end is not None and t >= end:
                return None
            return image


class WarmupDrop(SinkBase):
    """An output that passes on only the frames at or after ``start`` (seconds): the warm-up frames
    brought the recurrent state up to speed and are not part of the segment."""

    def __init__(self, sink: Sink, start: float | None) -> None:
        self.sink = sink
        self.start = start
        self.name, self.live, self.accepts_alpha = sink.name, sink.live, sink.accepts_alpha
        self.dropped = 0

    def open(self, width: int, height: int, fps: float) -> None:
        self.sink.open(width, height, fps)

    def write(self, frame: Frame) -> None:
        if self.start is not None and frame.pts is not None and frame.pts < self.start:
            self.dropped += 1
            return
        self.sink.write(frame)

    def abort(self, reason: str = "the run failed") -> None:
        self.sink.abort(reason)

    def cancel_on(self, event: threading.Event) -> None:
        self.sink.cancel_on(event)

    def close(self) -> None:
        self.sink.close()


def join(parts: list[str], output: str) -> int:
    """Concatenate the segment files ``parts`` into ``output`` by stream copy (no re-encoding): each part's
    timestamps move on by the length of those before it. Written under ``.part`` and renamed at the end;
    returns the frames (packets) written. MediaError names the part that cannot be read."""
    if not parts:
        raise ValueError("join: no parts")
    target = Path(output)
    temp = target.with_name(f"{target.name}.part")
    fmt = file_plan(target.suffix.lower(), Config())[0]
    frames = 0
    try:
        with av.open(parts[0]) as first, av.open(str(temp), "w", format=fmt) as out:
            template = first.streams.video[0]
            ostream = out.add_stream_from_template(template)
            offset = Fraction(0)  # seconds: where the next part starts
            for part in parts:
                frames, offset = _copy_part(part, out, ostream, offset, frames)
        os.replace(temp, target)
    except (av.FFmpegError, OSError) as exc:
        temp.unlink(missing_ok=True)
        raise MediaError(f"joining {output}: {one_line(exc)}") from exc
    log.info("joined %d segments into %s (%d frames)", len(parts), output, frames)
    return frames


def _copy_part(part: str, out: av.container.OutputContainer, ostream: av.video.stream.VideoStream,
               offset: Fraction, frames: int) -> tuple[int, Fraction]:
    """Mux every packet of ``part`` into ``out`` shifted by ``offset``; returns the new frame count and the
    offset of the next part (this one's end: its last presentation time plus that frame's duration)."""
    with av.open(part) as container:
        stream = container.streams.video[0]
        base = stream.time_base
        shift = round(offset / base)
        end = 0
        for packet in container.demux(stream):
            if packet.pts is None and packet.dts is None:
                continue  # the demuxer's end-of-stream marker
            packet.pts = None if packet.pts is None else packet.pts + shift
            packet.dts = None if packet.dts is None else packet.dts + shift
            if packet.pts is not None:
                end = max(end, packet.pts - shift + (packet.duration or 0))
            packet.stream = ostream
            out.mux(packet)
            frames += 1
    return frames, offset + end * base
