"""Encoded outputs through PyAV: files (``.mp4``, ``.mkv``, ``.mov``, ``.webm``) and network streams
(``rtsp://``, ``rtmp://``, ``srt://``, ``udp://``).

Streams are tuned for latency (no B-frames, a one-second GOP, zerolatency) and connect in ``open()``, so an
unreachable server raises ``SinkError`` at once and the pipeline can retry by calling ``open()`` again.
Files are finalised by ``close()`` (flush + trailer), which is also what a SIGTERM path calls.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError, SinkError, one_line
from .._av import av
from .base import SinkBase, register_sink
from .sizing import SizeKeeper

if TYPE_CHECKING:
    from ...config import Config
    from ...frame import Frame
    from .isolated import IsolatedSink

log = logging.getLogger(__name__)

URL_FORMATS = {"rtsp": "rtsp", "rtmp": "flv", "srt": "mpegts", "udp": "mpegts"}
FILE_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm")
CONNECT_TIMEOUT_S = 5.0
# MP4/MOV written as fragments of at most a second: a file cut off by a crash or a
# kill still plays up to its last fragment (a plain MP4 is unplayable without the moov written at the end).
# The moov waits for the first fragment (at most a second), so its edit list knows the B-frame delay and
# the first frame stays at time 0.
_FRAGMENTED = {"movflags": "+frag_keyframe+delay_moov+default_base_moof",
               "frag_duration": "1000000", "flush_packets": "1"}
_CLUSTERED = {"cluster_time_limit": "1000", "flush_packets": "1"}
CRASH_SAFE_OPTIONS = {"mp4": _FRAGMENTED, "mov": _FRAGMENTED, "matroska": _CLUSTERED, "webm": _CLUSTERED}


@dataclass(frozen=True)
class EncoderPlan:
    """What to encode with: codec, its pixel format, codec options, and whether alpha survives."""

    codec: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)
    alpha: bool = False
    max_b_frames: int | None = None


@functools.cache
def encoder_works(name: str) -> bool:
    """True when ``name`` is built into PyAV *and* opens and encodes a frame here (NVENC needs a GPU
    and driver that a build listing it may not have)."""
    if name not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 30)
        ctx.open()
        frame = av.VideoFrame.from_ndarray(np.zeros((256, 256, 3), np.uint8), format="rgb24")
        frame.pts = 0
        ctx.encode(frame)
        ctx.encode(None)
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.debug("encoder %s unusable: %s", name, exc)
        return False
    return True


def pick_h264_encoder(requested: str = "auto") -> str:
    """``h264_nvenc`` when it works, else ``libx264``; an explicit name is checked to exist."""
    if requested == "auto":
        return "h264_nvenc" if encoder_works("h264_nvenc") else "libx264"
    if requested not in av.codecs_available:
        raise ConfigError(f"encoder: {requested!r} is not available in this PyAV build")
    return requested


def default_bitrate(width: int, height: int, fps: float) -> int:
    """About 0.1 bit per pixel: ~2.8 Mbit/s for 720p30, ~6 Mbit/s for 1080p30."""
    return max(300_000, int(width * height * fps * 0.1))


def h264_plan(encoder: str, *, live: bool, fps: float, crf: int, bitrate: int) -> EncoderPlan:
    """Encoder settings for H.264: constant quality for files, low-latency CBR-ish for streams."""
    gop = str(max(1, round(fps)))
    if encoder == "h264_nvenc":
        if live:
            opts = {"preset": "p1", "tune": "ull", "zerolatency": "1", "rc": "cbr", "g": gop,
                    "b": str(bitrate)}
        else:
            opts = {"preset": "p4", "rc": "vbr", "cq": str(crf), "b": "0"}
        return EncoderPlan(encoder, "yuv420p", opts, max_b_frames=0 if live else None)
    if encoder == "libx264":
        if live:
            opts = {"preset": "veryfast", "tune": "zerolatency", "g": gop, "bf": "0", "b": str(bitrate),
                    "maxrate": str(bitrate), "bufsize": str(bitrate)}
        else:
            opts = {"preset": "veryfast", "crf": str(crf)}
        return EncoderPlan(encoder, "yuv420p", opts, max_b_frames=0 if live else None)
    # A forced encoder we have no recipe for: give it the essentials and let it pick the rest.
    return EncoderPlan(encoder, "yuv420p", {"g": gop} if live else {}, max_b_frames=0 if live else None)


def file_plan(suffix: str, config: Config) -> tuple[str, EncoderPlan]:
    """(container format, encoder plan) for an output file suffix; ConfigError for an unknown one."""
    if suffix == ".mov":  # ProRes 4444 keeps a 16-bit alpha channel, what editors expect
        return "mov", EncoderPlan("prores_ks", "yuva444p10le",
                                  {"profile": "4444", "alpha_bits": "16"}, alpha=True)
    if suffix == ".webm":  # VP9 with alpha (stored as a Matroska BlockAdditional), what browsers play
        crf = str(min(63, config.crf + 11))  # roughly x264's quality at the same number
        return "webm", EncoderPlan("libvpx-vp9", "yuva420p",
                                   {"crf": crf, "b": "0", "deadline": "realtime", "cpu-used": "8",
                                    "row-mt": "1", "lag-in-frames": "0", "auto-alt-ref": "0"}, alpha=True)
    if suffix in (".mp4", ".mkv"):
        fmt = "mp4" if suffix == ".mp4" else "matroska"
        encoder = pick_h264_encoder(config.encoder)
        return fmt, h264_plan(encoder, live=False, fps=config.fps or 30.0, crf=config.crf, bitrate=0)
    raise ConfigError(f"output file {suffix or '(no suffix)'!r}: unsupported suffix "
                      f"(known: {', '.join(FILE_SUFFIXES)})")


def frame_rate(fps: float) -> Fraction:
    """``fps`` as a Fraction, NTSC rates exact: 29.97 -> 30000/1001 (what players expect), not 2997/100."""
    if abs(fps - round(fps)) < 1e-6:
        return Fraction(round(fps))
    ntsc = round(fps * 1.001)
    if ntsc and abs(fps - ntsc / 1.001) < 1e-4 * fps:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


class StreamSink(SinkBase):
    """A PyAV output container with one video stream, to a file or a network URL."""

    def __init__(self, spec: str, config: Config) -> None:
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"output: {spec!r} is not a path or URL")
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else None
        self.name = spec
        self.config = config
        self.target = spec[len("file://") :] if scheme == "file" else spec
        self.scheme = scheme if scheme in URL_FORMATS else None
        if scheme not in (None, "file") and self.scheme is None:
            known = ", ".join(URL_FORMATS)
            raise ConfigError(f"output {spec!r}: no stream sink for {scheme!r} (known: {known})")
        self.live = self.scheme is not None
        if self.live:
            self.suffix = ""
            self.accepts_alpha = False
        else:
            self.suffix = Path(self.target).suffix.lower()
            # Validate now, so a typo fails at startup rather than at the first frame.
            self.accepts_alpha = file_plan(self.suffix, config)[1].alpha
        self.frames_written = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] = (0, 0)
        self._first_capture_ns: int | None = None
        self._first_index = 0
        self._last_pts = -1
        self._resizer = SizeKeeper(spec)
        self._publish = True
        self._abort_reason = "the run failed"

    def _plan(self, width: int, height: int, fps: float) -> tuple[str, EncoderPlan, dict[str, str]]:
        if not self.live:
            fmt, plan = file_plan(self.suffix, self.config.replace(fps=fps))
            return fmt, plan, dict(CRASH_SAFE_OPTIONS.get(fmt, {}))
        bitrate = self.config.bitrate or default_bitrate(width, height, fps)
        plan = h264_plan(pick_h264_encoder(self.config.encoder), live=True, fps=fps, crf=self.config.crf,
                         bitrate=bitrate)
        us = str(int(CONNECT_TIMEOUT_S * 1e6))
        opts = {"rtsp": {"rtsp_transport": "tcp", "timeout": us},
                "rtmp": {"rw_timeout": us},  # best effort: PyAV connects without it, later I/O may use it
                "srt": {"connect_timeout": str(int(CONNECT_TIMEOUT_S * 1000))},
                "udp": {}}[self.scheme or "udp"]
        return URL_FORMATS[self.scheme or "udp"], plan, opts

    def open(self, width: int, height: int, fps: float) -> None:
        """Create the container and connect (streams) or create the file; reopening starts afresh."""
        if width <= 0 or height <= 0 or not fps or fps <= 0:
            raise ValueError(f"output {self.name}: bad size/fps {width}x{height} @ {fps}")
        self.close()
        if not self.live and not Path(self.target).parent.is_dir():
            raise SinkError(f"output {self.target}: directory {Path(self.target).parent} does not exist")
        if not self.live and Path(self.target).is_dir():
            raise SinkError(f"output {self.target}: is a directory")
        self._publish = True
        fmt, plan, opts = self._plan(width, height, fps)
        # Chroma-subsampled formats need even sizes; dropping one edge row/column is invisible.
        self._size = (width - width % 2, height - height % 2)
        try:
            container = av.open(self._writing_path(), "w", format=fmt, options=opts)
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"output {self.target}: cannot open: {one_line(exc)}") from exc
        try:
            rate = frame_rate(fps)
            stream = container.add_stream(plan.codec, rate=rate, options=dict(plan.options))
            stream.width, stream.height = self._size
            stream.pix_fmt = plan.pix_fmt
            stream.codec_context.time_base = 1 / rate
            if plan.max_b_frames is not None:
                stream.codec_context.max_b_frames = plan.max_b_frames
            if plan.alpha and fmt == "webm":
                stream.metadata["alpha_mode"] = "1"  # tells players the BlockAdditionals are alpha
            container.start_encoding()  # connect / write the header now, not at the first frame
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._abandon(container)
            if not self.live:
                Path(self._writing_path()).unlink(missing_ok=True)
            missing = isinstance(exc, av.ProtocolNotFoundError)
            hint = " (this FFmpeg build lacks that protocol)" if missing else ""
            what = f"{plan.codec}/{fmt}"
            raise SinkError(f"output {self.target}: cannot start {what}: {one_line(exc)}{hint}") from exc
        self._container, self._stream = container, stream
        self._first_capture_ns, self._first_index, self._last_pts = None, 0, -1
        self._first_source_pts: float | None = None
        log.info("output %s: %s %dx%d @ %s fps", self.target, plan.codec, *self._size, rate)

    def _writing_path(self) -> str:
        """Files are written under a ``.part`` name and renamed when finalised: a run that fails before its
        first frame never replaces (or deletes) a file an earlier run produced."""
        return self.target if self.live else f"{self.target}.part"

    @staticmethod
    def _abandon(container: av.container.OutputContainer) -> None:
        try:
            container.close()
        except (av.FFmpegError, OSError) as exc:
            log.debug("closing a failed output: %s", exc)

    def _pts(self, frame: Frame, time_base: Fraction) -> int:
        if self._first_capture_ns is None:
            self._first_capture_ns, self._first_index = frame.capture_ns, frame.index
            self._first_source_pts = frame.pts
        if not self.live and frame.pts is not None and self._first_source_pts is not None:
            # a file played once keeps its own timing: variable-frame-rate input stays VFR, same duration
            pts = round((frame.pts - self._first_source_pts) / time_base)
        elif self.live:
            # Streams keep capture timing: dropped frames leave a gap instead of speeding playback up.
            pts = round((frame.capture_ns - self._first_capture_ns) / 1e9 / time_base)
        else:
            # Files: one frame period per source frame; frames a live source dropped leave their gap too
            pts = frame.index - self._first_index
        pts = max(pts, self._last_pts + 1)
        self._last_pts = pts
        return pts

    def _picture(self, frame: Frame) -> av.VideoFrame:
        image = frame.image
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise TypeError(f"output {self.name}: expected HxWx3/4 uint8, got {image.shape} {image.dtype}")
        width, height = self._size
        if image.shape[1] - image.shape[1] % 2 != width or image.shape[0] - image.shape[0] % 2 != height:
            image = self._resizer.fit(image, width, height)  # a size change mid-run never ends a recording
        image = image[:height, :width]
        # RGBA only comes to an output that accepts alpha; RGB into an alpha codec is made opaque by the
        # encoder's own conversion
        fmt = "rgba" if image.shape[2] == 4 else "rgb24"
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)

    def write(self, frame: Frame) -> None:
        """Encode and send one frame; a broken connection or disk error raises ``SinkError``."""
        if self._container is None or self._stream is None:
            raise SinkError(f"output {self.name}: write() before open()")
        picture = self._picture(frame)
        picture.time_base = self._stream.codec_context.time_base
        picture.pts = self._pts(frame, picture.time_base)
        try:
            self._container.mux(self._stream.encode(picture))
        except (av.FFmpegError, OSError) as exc:
            container, self._container, self._stream = self._container, None, None
            self._abandon(container)
            kept = "" if self.live else f" (what was written is in {self._writing_path()})"
            raise SinkError(f"output {self.target}: write failed: {one_line(exc)}{kept}") from exc
        self.frames_written += 1

    def abort(self, reason: str = "the run failed") -> None:
        """Close after a failed or interrupted run: the container is finalised (playable) but a file keeps
        its ``.part`` name, so it does not replace an earlier complete file."""
        self._publish = False
        self._abort_reason = reason
        self.close()

    def close(self) -> None:
        """Flush the encoder and finalise the container; safe to call more than once."""
        container, stream = self._container, self._stream
        self._container, self._stream = None, None
        if container is None:
            return
        try:
            if stream is not None:
                container.mux(stream.encode(None))
        except (av.FFmpegError, OSError) as exc:
            log.warning("output %s: flushing the encoder failed: %s", self.target, exc)
        try:
            container.close()
        except (av.FFmpegError, OSError) as exc:
            log.warning("output %s: finalising failed: %s", self.target, exc)
        if not self.live and self._last_pts < 0:
            # A container without a single frame is not playable (Matroska has no track yet); an
            # unopenable file left behind looks like a bug, no file says what happened.
            Path(self._writing_path()).unlink(missing_ok=True)
            log.warning("output %s: no frames were written; nothing was saved", self.target)
            return
        if not self.live:
            if not self._publish:
                log.warning("output %s: %s; its %d frames are in %s", self.target, self._abort_reason,
                            self.frames_written, self._writing_path())
                return
            try:
                os.replace(self._writing_path(), self.target)
            except OSError as exc:
                log.error("output %s: cannot rename %s into place (%s)", self.target, self._writing_path(), exc)
                return
        log.info("output %s closed after %d frames", self.target, self.frames_written)


@register_sink("file", *URL_FORMATS)
def stream_sink(spec: str, config: Config) -> StreamSink | IsolatedSink:
    """Factory for output files (by suffix) and rtsp/rtmp/srt/udp URLs; URLs are written by a separate
    process, so a peer that stalls cannot stall the daemon (see ``isolated.py``)."""
    if "://" in spec and spec.split("://", 1)[0].lower() in URL_FORMATS:
        from .isolated import IsolatedSink

        return IsolatedSink(spec, config)
    return StreamSink(spec, config)
