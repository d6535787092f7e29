"""Files and network streams decoded with PyAV: ``path.mp4``, ``rtsp://``, ``rtmp://``, ``udp://``, ...

Files are not live (every frame reaches the model) unless ``config.realtime`` asks for them to be played
at their own frame rate, like a camera. Network streams are live and opened with low-latency options and
a read timeout, so a dead stream raises ``SourceError`` instead of hanging the capture thread forever.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import SourceError, SourceNotReady, one_line
from .._av import RgbConverter, av, decoder_threads
from ..backoff import backoff_delays
from .base import SourceBase, register_source
from .datagram import NO_PICTURE_S, STALE_S, DatagramReader, Datagrams
from .orientation import display_matrix, orient

if TYPE_CHECKING:
    from ...config import Config

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtmp", "http", "https", "udp", "srt")
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
MAX_PACING_SLEEP_S = 1.0
DEFAULT_FPS = 30.0

# Probing a live stream is latency the user sees at every (re)connection. About one frame of probe finds the
# SPS/PPS of the usual H.264 stream, and the packets read while probing are kept: "nobuffer" would throw them
# away, keyframe included, so that the first picture waited for the next keyframe, a GOP later. Measured
# (BENCHMARKS.md): first picture 1.40 s -> 0.12 s after an RTMP publisher connects, 0.47 -> 0.22 s for UDP.
_LIVE_OPTIONS = {
    "flags": "low_delay",
    "probesize": "500000",
    "analyzeduration": "33000",
}
FPS_RANGE = (1.0, 300.0)  # a rate outside this is a guess gone wrong (a short probe of a stream without timing)
_SCHEME_OPTIONS = {
    "rtsp": {"rtsp_transport": "tcp", "timeout": str(int(READ_TIMEOUT_S * 1e6))},
    "rtmp": {"rw_timeout": str(int(READ_TIMEOUT_S * 1e6))},
    "srt": {"timeout": str(int(READ_TIMEOUT_S * 1e6))},
}


TRUNCATED_FRACTION = 0.95  # a file ending before this share of its declared frames gets a warning
CONNECTIONLESS_RETRY_S = 0.02  # UDP (and SRT listeners): listen again at once, packets may come any moment
PACKET_WAIT_S = 0.5  # UDP: how long one open() waits for the first packet before saying "not up"
POLL_S = 0.1
UNREAD = object()  # a display matrix not read yet
FOREIGN_S = 5.0  # UDP: how long datagrams that are not MPEG-TS are skipped before probing for another format


def url_scheme(spec: str) -> str | None:
    """The lower-case scheme of a URL spec, or None for a plain path."""
    return spec.split("://", 1)[0].lower() if "://" in spec else None


def _declared_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                     fps: float) -> int:
    """The frame count a file declares: its header's count, else the stream's duration times its rate, else the
    container's (Matroska keeps the duration there only); 0 if unknown."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return int(float(stream.duration * stream.time_base) * fps)
    if container.duration and container.duration > 0:  # in AV_TIME_BASE units (microseconds)
        return int(container.duration / av.time_base * fps)
    return 0


def _check_file(target: str) -> None:
    """SourceError saying what ``target`` is when it is not a regular file (not just "no such file")."""
    path = Path(target)
    if path.is_file():
        return
    if not path.exists():
        raise SourceError(f"{target}: no such file")
    if path.is_dir():
        raise SourceError(f"{target}: is a directory, not a video file")
    kind = "a device" if path.is_char_device() or path.is_block_device() else "a pipe or socket"
    raise SourceError(f"{target}: is {kind}, not a video file")


class StreamSource(SourceBase):
    """A PyAV input: a media file (``file`` key, or any path) or a network URL."""

    def __init__(
        self,
        spec: str,
        *,
        realtime: bool = False,
        loop: bool = False,
        fps: float | None = None,
        open_timeout: float | None = None,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"stream source: {spec!r} is not a path or URL")
        scheme = url_scheme(spec)
        self.target = spec[len("file://") :] if scheme == "file" else spec
        self.is_network = scheme in NETWORK_SCHEMES
        self.name = spec
        self.live = self.is_network or realtime
        self.reconnect = self.is_network  # an outage is worth retrying; the end of a file is just the end
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None  # (width, height) once open
        self.loop = loop and not self.is_network
        self._realtime = realtime and not self.is_network
        self._fps_hint = fps
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._clock: tuple[float, float] | None = None  # (monotonic at first frame, its pts seconds)
        self._frames_read = 0
        # the last frame's presentation time in seconds, for files played once (VFR files keep their timing
        # in file outputs); None for network streams and looped files, whose clocks restart or drift
        self.last_pts: float | None = None
        self._declared = 0  # frames the container says it holds (0: it does not say)
        self._cancel: threading.Event | None = None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(spec).query) if self.is_network else {}
        # nothing to connect to: the stream is there when packets arrive on our own port
        self.connectionless = scheme == "udp" or (scheme == "srt" and query.get("mode") == ["listener"])
        # UDP: our own socket, bound for the source's life (datagram.py); None for every other kind
        self._datagrams = Datagrams(self.target) if scheme == "udp" else None
        if self._datagrams is not None and self._datagrams.silence_us:
            read_timeout = self._datagrams.silence_us / 1e6
        if open_timeout is None:  # reopening a UDP socket we keep costs nothing: say "not up" early
            open_timeout = PACKET_WAIT_S if self._datagrams is not None else OPEN_TIMEOUT_S
        self._timeout = (open_timeout, read_timeout)
        self._reader: DatagramReader | None = None
        self._foreign_since: float | None = None  # UDP: since when only datagrams that are not MPEG-TS came
        self.stale_frames = 0  # UDP frames dropped because their data waited too long (never a backlog)
        self._backlog = 0
        self._to_rgb = RgbConverter()  # one swscale context for every frame (to_ndarray makes one per frame)
        # the stream's display matrix, read from its first frame after each open (UNREAD until then): reading
        # a frame's side data ties the frame into a reference cycle (PyAV's SideDataContainer), so doing it for
        # every frame left every decoded frame, its buffer and its swscale threads, to the garbage collector
        self._matrix: tuple[int, ...] | None | object = UNREAD

    def cancel_on(self, event: threading.Event) -> None:
        """Stop waiting for a network source to answer as soon as ``event`` is set (the pipeline's stop)."""
        self._cancel = event

    def retry_delays(self) -> Iterator[float]:
        """Pauses between reopening attempts after a loss: none for connectionless streams (each attempt
        is itself a wait for packets), capped exponential backoff for servers."""
        if not self.connectionless:
            yield from backoff_delays()
        while True:
            yield CONNECTIONLESS_RETRY_S

    def _options(self) -> dict[str, str]:
        if not self.is_network:
            return {}
        scheme = url_scheme(self.target) or ""
        return {**_LIVE_OPTIONS, **_SCHEME_OPTIONS.get(scheme, {})}

    def open(self) -> None:
        """Open (or reopen, after a failure) the file or URL and pick its first video stream.

        A network source that is not up raises ``SourceNotReady``; an unknown host name ``SourceError``."""
        self.suspend()
        if not self.is_network:
            _check_file(self.target)
        if self.is_network:
            self._check_host()
        if self._datagrams is not None:
            container = self._open_datagrams()
        else:
            container = self._open_container() if self.is_network else self._av_open()
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.target}: no video stream")
        stream = container.streams.video[0]
        if self._datagrams is not None and not stream.codec_context.width:
            container.close()  # joined mid-way and no keyframe in the probe: the next one will do
            raise SourceNotReady(f"{self.target}: no picture yet")
        self.size = (stream.codec_context.width, stream.codec_context.height)
        # Frame threading adds a frame of latency per thread; slices do not.
        stream.thread_type = "SLICE" if self.live else "AUTO"
        if self.live:  # a live decoder idles between frames: no pool of a thread per core for small frames
            stream.codec_context.thread_count = decoder_threads(*self.size)
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        self.fps = rate if FPS_RANGE[0] <= rate <= FPS_RANGE[1] else (self._fps_hint or DEFAULT_FPS)
        if rate and rate != self.fps:
            log.warning("%s: frame rate %g is not plausible; taking %g (set --fps to choose)", self.target, rate,
                        self.fps)
        self._declared = _declared_frames(container, stream, self.fps)
        if self._reader is not None:  # from now on, data without pictures means a sender the demuxer lost
            self._reader.picture_wait = max(NO_PICTURE_S, 3 / self.fps)
            self._reader.picture_seen()
        self._container = container
        self._frames = container.decode(stream)
        self._clock = None
        self._matrix = UNREAD
        log.info("opened %s: %dx%d @ %.3f fps%s", self.target, stream.codec_context.width,
                 stream.codec_context.height, self.fps, " (live)" if self.live else "")

    def _check_host(self) -> None:
        host = urllib.parse.urlsplit(self.target).hostname
        if not host:
            return
        try:
            ipaddress.ip_address(host)
            return
        except ValueError:
            pass
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:  # the resolver itself is unreachable: may come back
                raise SourceNotReady(f"{self.target}: cannot resolve {host!r} right now ({exc.strerror})") from exc
            raise SourceError(f"{self.target}: unknown host {host!r} ({exc.strerror})") from exc

    def _av_open(self) -> av.container.InputContainer:
        try:
            return av.open(self.target, options=self._options(), timeout=self._timeout)
        except av.ExitError as exc:  # PyAV's open timeout fired
            raise SourceNotReady(f"{self.target}: no answer within {self._timeout[0]:g} s") from exc
        except av.InvalidDataError as exc:
            if not self.is_network:
                raise SourceError(f"{self.target}: cannot open: {exc.strerror or one_line(exc)}") from exc
            # a server that accepts and says nothing (or nothing usable yet) until its own timeout: like one
            # that is not up, it is waited for (InvalidDataError is also a ValueError, fatal just below)
            raise SourceNotReady(f"{self.target}: no usable answer ({exc.strerror or one_line(exc)})") from exc
        except (av.ProtocolNotFoundError, ValueError, UnicodeDecodeError) as exc:
            hint = " (this FFmpeg build lacks that protocol)" if isinstance(exc, av.ProtocolNotFoundError) else ""
            raise SourceError(f"{self.target}: cannot open: {one_line(exc)}{hint}") from exc
        except (av.FFmpegError, OSError) as exc:
            kind = SourceNotReady if self.is_network else SourceError
            raise kind(f"{self.target}: cannot open: {one_line(exc)}") from exc

    def _open_datagrams(self) -> av.container.InputContainer:
        """UDP: bind the port once (a port in use is an error), wait briefly for packets (none yet: "not up"),
        then demux what the socket holds, from the oldest packet not yet stale."""
        datagrams = self._datagrams
        assert datagrams is not None
        datagrams.start()
        datagrams.drop_stale()
        if not datagrams.wait(self._timeout[0], self._cancel):
            raise SourceNotReady(f"{self.target}: no packets yet")
        mpegts = datagrams.looks_like_mpegts()
        now = time.monotonic()
        if mpegts:
            self._foreign_since = None
        elif self._foreign_since is None or now - self._foreign_since < FOREIGN_S:
            # junk (or a stray sender) before the stream: probing it would wait for 500 KB; give MPEG-TS, what
            # almost every sender sends, a few seconds first, and only then probe for another format
            if self._foreign_since is None:
                log.info("%s: skipping datagrams that are not MPEG-TS while waiting for a stream", self.target)
                self._foreign_since = now
            datagrams.discard()
            raise SourceNotReady(f"{self.target}: datagrams that are not MPEG-TS; waiting for a stream")
        options = self._options()
        self._reader = reader = datagrams.reader(self._timeout[1], self._cancel)
        try:
            return av.open(reader, format="mpegts" if mpegts else None, options=options)
        except (av.FFmpegError, OSError, ValueError) as exc:
            why = reader.failure or f"cannot open: {one_line(exc)}"
            raise SourceNotReady(f"{self.target}: {why}") from exc

    def _open_container(self) -> av.container.InputContainer:
        """``av.open`` on a helper thread (PyAV releases the GIL there), so a stop is not held up by a peer
        that is slow to answer: the helper is left to finish on its own and closes what it opened."""
        result: dict[str, object] = {}
        lock, done = threading.Lock(), threading.Event()

        def opener() -> None:
            try:
                container: object = self._av_open()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                container = exc
            with lock:
                if result.get("abandoned"):
                    if not isinstance(container, BaseException):
                        container.close()
                    return
                result["outcome"] = container
                done.set()

        threading.Thread(target=opener, name="rvm-source-open", daemon=True).start()
        while not done.wait(POLL_S):
            if self._cancel is not None and self._cancel.is_set():
                with lock:
                    if not done.is_set():
                        result["abandoned"] = True
                        raise SourceError(f"{self.target}: stopped while waiting for it")
        outcome = result["outcome"]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _next_frame(self, frames: Iterator[av.VideoFrame]) -> av.VideoFrame | None:
        try:
            return next(frames)
        except StopIteration:
            pass
        if not self.loop:
            return None
        # Seek back rather than reopen: cheaper, and the decoder keeps its threads.
        if self._container is None:
            return None
        try:
            self._container.seek(0)
            self._frames = self._container.decode(self._container.streams.video[0])
            self._clock = None
            return next(self._frames)
        except StopIteration:
            return None

    def _pace(self, frame: av.VideoFrame) -> None:
        if frame.time is not None:
            t = float(frame.time)
        else:
            t = self._frames_read / (self.fps or DEFAULT_FPS)
        now = time.monotonic()
        if self._clock is None:
            self._clock = (now, t)
            return
        delay = self._clock[0] + (t - self._clock[1]) - now
        if abs(delay) > MAX_PACING_SLEEP_S:
            # a timestamp jump (either way): play on from here rather than freeze or race to catch up
            self._clock = (now, t)
        elif delay > 0:
            time.sleep(delay)

    def read(self) -> np.ndarray | None:
        """The next RGB uint8 frame, or None at the end (files without ``loop``, a stream that ended)."""
        if self._frames is None:
            raise SourceError(f"{self.target}: read() before open()")
        frame = self._decode()
        while frame is not None and self._stale():
            frame = self._decode()
        self._end_of_backlog()
        if frame is None and self._reader is not None and self._reader.failure:
            raise SourceError(f"{self.target}: {self._reader.failure}")
        if frame is None:
            declared = 0 if self.is_network else self._declared
            if declared and self._frames_read < declared * TRUNCATED_FRACTION:
                log.warning("%s: ended after %d of its %d declared frames (truncated or damaged)", self.target,
                            self._frames_read, declared)
            else:
                log.info("%s: end of stream after %d frames", self.target, self._frames_read)
            return None
        if self._realtime:
            self._pace(frame)
        self._frames_read += 1
        self.last_pts = None if self.is_network or self.loop or frame.time is None else float(frame.time)
        image = self._to_rgb(frame)
        # phones store portrait video as landscape plus a display matrix (a turn, maybe a mirror): show it
        # as players do
        if self._matrix is UNREAD:
            self._matrix = display_matrix(frame)
        return orient(image, self._matrix)

    def _decode(self) -> av.VideoFrame | None:
        try:
            frame = self._next_frame(self._frames)
        except av.ExitError as exc:  # PyAV's read timeout fired
            raise SourceError(f"{self.target}: no data for {self._timeout[1]:g} s") from exc
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.target}: decoding failed: {one_line(exc)}") from exc
        except IndexError as exc:  # PyAV's demux meets a stream FFmpeg added mid-way (MPEG-TS: a new PMT)
            raise SourceError(f"{self.target}: a new stream appeared mid-way (a new sender?)") from exc
        if frame is not None and self._reader is not None:
            self._reader.picture_seen()
        return frame

    def _stale(self) -> bool:
        """UDP: whether the frame just decoded came from data that waited over ``STALE_S`` in the socket buffer.
        A live source never delivers such a backlog (after a stall, a burst of old frames): it is decoded,
        so the next fresh frame decodes, and dropped, counted in ``stale_frames``."""
        if self._datagrams is None or time.monotonic() - self._datagrams.taken_arrival <= STALE_S:
            return False
        if not self._backlog:
            log.warning("%s: frames arrive late (over %g s); dropping the stale ones", self.target, STALE_S)
        self._backlog += 1
        self.stale_frames += 1
        return True

    def _end_of_backlog(self) -> None:
        if self._backlog:
            log.info("%s: dropped %d stale frame(s); live again", self.target, self._backlog)
            self._backlog = 0

    def suspend(self) -> None:
        """Between reconnection attempts: release the demuxer but keep a UDP socket bound, so the packets of
        a sender that comes back are all there for the next ``open()``."""
        container, self._container, self._frames, self._reader = self._container, None, None, None
        if container is not None:
            try:
                container.close()
            except (av.FFmpegError, OSError) as exc:  # closing a dead network stream may complain
                log.debug("closing %s: %s", self.target, exc)

    def close(self) -> None:
        """Release the container and the socket; safe to call more than once."""
        self.suspend()
        if self._datagrams is not None:
            self._datagrams.close()


@register_source("file", *NETWORK_SCHEMES)
def stream_source(spec: str, config: Config) -> StreamSource:
    """Factory for paths and network URLs: files honour ``config.loop``/``realtime``, URLs are live."""
    return StreamSource(spec, realtime=config.realtime, loop=config.loop, fps=config.fps)
