"""A UDP input socket that outlives the demuxer: ``udp://HOST:PORT`` sources read through it.

FFmpeg's own ``udp`` protocol binds its socket when the container opens and closes it with the container, so
every reconnection after a silence re-binds the port, and packets that arrive in between are lost. Here the
socket is bound once, for the life of the source, and a thread drains it into a bounded buffer (like FFmpeg's
``fifo_size``, overruns drop the oldest data and are never fatal). The demuxer reads that buffer through a
file-like object, so a stream that comes back is decoded from its very first packet, which is where a
restarted encoder puts its keyframe.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import socket
import threading
import time
import urllib.parse

from ...errors import SourceError, one_line

log = logging.getLogger(__name__)

TS_PACKET = 188  # FFmpeg counts ``fifo_size`` in MPEG-TS packets
DEFAULT_CAPACITY = 8 * 2**20  # bytes held while nobody reads: ~3 s of a 20 Mb/s stream
DEFAULT_RCVBUF = 4 * 2**20  # asked of the kernel; it may grant less (net.core.rmem_max)
STALE_S = 1.0  # on reopening, data older than this is dropped: decoding it would only replay the past
NO_PICTURE_S = 3.0  # data arriving this long with no picture decoded from it: the demuxer cannot follow it
MAX_GAP_S = 0.2  # a silence between datagrams counts at most this much towards NO_PICTURE_S
POLL_S = 0.1
MAX_DATAGRAM = 65536
# FFmpeg udp:// options that only tune FFmpeg's own reader or a sender: accepted, nothing to do here
_IGNORED = {"overrun_nonfatal", "pkt_size", "ttl", "connect", "broadcast", "circular_buffer_size", "bitrate",
            "burst_bits", "dscp"}


def _number(query: dict[str, list[str]], key: str, url: str) -> int | None:
    if key not in query:
        return None
    try:
        value = int(query[key][-1])
    except ValueError:
        raise SourceError(f"{url}: {key}={query[key][-1]!r} is not a whole number") from None
    if value <= 0:
        raise SourceError(f"{url}: {key} must be positive, not {value}")
    return value


class Datagrams:
    """The socket and its buffer. ``start()`` binds (errors are ``SourceError``); ``reader()`` gives the file-like
    object one demuxer reads; ``close()`` releases the port."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not port:
            raise SourceError(f"{url}: no port to listen on (udp://HOST:PORT)")
        self.url = url
        self.port = port
        self.host = parts.hostname or ""  # "udp://@:1234" and "udp://:1234": every local address
        self.local = query.get("localaddr", [""])[-1]
        fifo = _number(query, "fifo_size", url)
        self.capacity = fifo * TS_PACKET if fifo else DEFAULT_CAPACITY
        self.rcvbuf = _number(query, "buffer_size", url) or DEFAULT_RCVBUF
        self.silence_us = _number(query, "timeout", url)  # FFmpeg's read timeout, in microseconds
        self.reuse = query.get("reuse", query.get("reuse_socket", ["0"]))[-1] not in ("0", "")
        unknown = sorted(set(query) - _IGNORED - {"localaddr", "fifo_size", "buffer_size", "timeout", "reuse",
                                                   "reuse_socket"})
        if unknown:
            log.warning("%s: ignoring the option(s) %s", url, ", ".join(unknown))
        self.dropped = 0  # bytes dropped because nobody read them in time
        self.taken_arrival = 0.0  # monotonic arrival time of the data last handed to the demuxer
        self._chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self._held = 0
        self._ready = threading.Condition()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # ----- the socket ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the port (once) and start draining it."""
        if self._socket is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            self._bind(sock)
            sock.settimeout(POLL_S)
        except OSError as exc:
            sock.close()
            raise SourceError(f"{self.url}: cannot listen on port {self.port}: {one_line(exc)}") from exc
        self._socket = sock
        self._closed.clear()
        self._thread = threading.Thread(target=self._drain, name=f"rvm-udp:{self.port}", daemon=True)
        self._thread.start()

    def _bind(self, sock: socket.socket) -> None:
        try:
            address = ipaddress.ip_address(self.host) if self.host else None
        except ValueError:  # a host name: whatever it resolves to is where packets come from, not ours
            address = None
        if address is not None and address.is_multicast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # several receivers of one group
            sock.bind((self.host, self.port))
            if address.version == 4:
                group = socket.inet_aton(self.host) + socket.inet_aton(self.local or "0.0.0.0")
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
            else:
                group = socket.inet_pton(socket.AF_INET6, self.host) + (0).to_bytes(4, "little")
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
            return
        if self.local:
            sock.bind((self.local, self.port))
            return
        if address is not None:
            try:  # one of our own addresses (127.0.0.1, a LAN address): listen there only
                sock.bind((self.host, self.port))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
        # the sender's address, as FFmpeg also accepts it: listen on every local address
        sock.bind(("::" if sock.family == socket.AF_INET6 else "", self.port))

    def _drain(self) -> None:
        sock = self._socket
        assert sock is not None
        while not self._closed.is_set():
            try:
                data = sock.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:  # the socket was closed under us (close()), or the network is gone
                if not self._closed.is_set():
                    log.debug("%s: receive failed: %s", self.url, exc)
                    time.sleep(POLL_S)
                continue
            with self._ready:
                self._chunks.append((time.monotonic(), data))
                self._held += len(data)
                while self._held > self.capacity:
                    _, old = self._chunks.popleft()
                    self._held -= len(old)
                    self.dropped += len(old)
                self._ready.notify_all()

    def close(self) -> None:
        """Release the port; safe to call more than once."""
        self._closed.set()
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(2 * POLL_S + 1)
            self._thread = None

    # ----- the buffer ---------------------------------------------------------------------------------
    def drop_stale(self, older_than: float = STALE_S) -> None:
        """Forget data that waited longer than ``older_than`` seconds (before a demuxer starts on it)."""
        limit = time.monotonic() - older_than
        with self._ready:
            while self._chunks and self._chunks[0][0] < limit:
                self._held -= len(self._chunks.popleft()[1])

    def discard(self) -> None:
        """Forget everything held (datagrams that are not the stream's)."""
        with self._ready:
            self._chunks.clear()
            self._held = 0

    def wait(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        """True once some data is held; False after ``timeout`` seconds or when ``cancel`` is set."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while not self._chunks:
                left = deadline - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()) or self._closed.is_set():
                    return False
                self._ready.wait(min(left, POLL_S))
        return True

    def looks_like_mpegts(self) -> bool:
        """Whether the data held is MPEG-TS (datagrams of whole 188-byte packets, sync byte 0x47), as almost every
        UDP video stream is: then the demuxer needs no format probe. Datagrams before the first TS one are junk
        to a TS demuxer and are dropped: a junk datagram first made the format probe wait
        for 500 KB, half a minute of a small stream, which then came out as one stale burst."""
        with self._ready:
            first = next((i for i, (_, data) in enumerate(self._chunks) if _is_mpegts(data)), None)
            if first is None:
                return False
            for _ in range(first):
                self._held -= len(self._chunks.popleft()[1])
        if first:
            log.info("%s: skipped %d datagram(s) that are not MPEG-TS before the stream", self.url, first)
        return True

    def take(self, size: int) -> bytes:
        """Up to ``size`` bytes of what is held (b"" when nothing is); ``taken_arrival`` says when they came."""
        with self._ready:
            if not self._chunks:
                return b""
            arrived, data = self._chunks.popleft()
            if len(data) > size:
                self._chunks.appendleft((arrived, data[size:]))
                data = data[:size]
            self._held -= len(data)
            self.taken_arrival = arrived
            return data

    def reader(self, silence: float, cancel: threading.Event | None,
               picture_wait: float = NO_PICTURE_S) -> DatagramReader:
        """A reader for one demuxer (see DatagramReader)."""
        return DatagramReader(self, silence, cancel, picture_wait)


def _is_mpegts(data: bytes) -> bool:
    """Whether a datagram carries MPEG-TS: sync bytes (0x47) every 188 bytes, from its start (``pkt_size=1316``)
    or, when the sender cuts datagrams anywhere (FFmpeg's default 1472 bytes), from some offset, twice at least."""
    if not data:
        return False
    if len(data) % TS_PACKET == 0:
        return data[::TS_PACKET].count(0x47) == len(data) // TS_PACKET
    return any(data[offset] == 0x47 and len(syncs := data[offset::TS_PACKET]) >= 2 and syncs.count(0x47) == len(syncs)
               for offset in range(min(TS_PACKET, len(data))))


class DatagramReader:
    """The file-like object PyAV demuxes: ``read()`` blocks until data is held. After ``silence`` seconds
    without any, or once ``cancel`` is set, it answers end-of-file and says why in ``failure``: no exception
    ever crosses FFmpeg's C code.

    Data that keeps coming while no picture does (``picture_wait`` seconds after ``picture_seen()``) is a
    sender the demuxer cannot follow: a new one with other MPEG-TS PIDs or another codec. That is an
    end-of-file with a ``failure`` too, so the source is reopened and probes the new stream afresh."""

    def __init__(self, datagrams: Datagrams, silence: float, cancel: threading.Event | None,
                 picture_wait: float = NO_PICTURE_S) -> None:
        self.datagrams = datagrams
        self.silence = silence
        self.cancel = cancel
        self.picture_wait = picture_wait
        self.failure: str | None = None
        self._armed = False  # not while the demuxer is still being opened (probing)
        self._blind_s = 0.0  # the sender's time (by arrival) that the demuxer read without a picture
        self._last_arrival: float | None = None

    def picture_seen(self) -> None:
        """The source decoded a picture from this reader's data just now (or has just opened it)."""
        self._armed, self._blind_s = True, 0.0

    def read(self, size: int) -> bytes:
        if self.failure is not None:
            return b""
        while True:
            data = self.datagrams.take(size)
            if data:
                return data if self._count_blind() else b""
            if not self.datagrams.wait(self.silence, self.cancel):
                stopping = self.cancel is not None and self.cancel.is_set()
                self.failure = "stopped while waiting for it" if stopping else f"no data for {self.silence:g} s"
                return b""

    def _count_blind(self) -> bool:
        """Add the data just taken to the time without pictures; False (and a ``failure``) past ``picture_wait``.

        Time is the data's arrival time, not ours: a stalled reader decoding a backlog is not blind, and a
        sender's pause counts for little (each gap at most ``MAX_GAP_S``)."""
        arrived, last = self.datagrams.taken_arrival, self._last_arrival
        self._last_arrival = arrived
        if last is not None and self._armed:
            self._blind_s += min(max(arrived - last, 0.0), MAX_GAP_S)
        if self._blind_s <= self.picture_wait:
            return True
        self.failure = (f"packets arrive but no picture for {self.picture_wait:g} s "
                        "(a new sender with other stream ids or another codec?)")
        return False
