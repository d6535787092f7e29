"""Chaos soak: the real daemon under a cycle of faults, from outside, as users and peers cause them.

``python -m rvm_live.tools.soak --chaos [--minutes 10] [--json report.json]`` starts ``python -m rvm_live`` on a
UDP source fed by a sender process, with a null output, an RTMP output to a server that comes and goes
(and, when there, accepts and never answers) and a UDP output. It then cycles: source outages, sink
outages, background swaps (good and bad), SIGHUPs (good and bad configs), control-API abuse and the attacks of
hostile web pages and clients (foreign Origin and Host, slowloris, slow uploads, never-reading viewers, absurd
preview rates). After each fault the daemon must still answer ``/health`` and keep producing frames (and an
attack must have changed nothing). It reports frames in/out, each fault injected and survived, RSS over time
and how long SIGTERM took at the end.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io._av import av

SPAWN = mp.get_context("spawn")
STEP_S = 4.0  # one fault every STEP_S seconds
FAULT_KINDS = ("source_outage", "background_swap", "sink_outage", "sighup", "api_abuse", "http_attacks", "udp_junk",
               "sender_swap")  # the cycle, in order
OTHER_SIZE = (320, 240)  # the other sender's frames (the demo clip is 176x144)
RECOVERY_S = 30.0  # how long frames may take to flow again after a fault before it counts as not survived


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(url: str, stop: Any) -> None:
    """Sender process: the demo clip, looped at 30 fps, to ``url`` through rvm-live's own StreamSink."""
    from ..assets import demo_clip
    from ..config import Config
    from ..frame import Frame
    from ..io.sinks.stream import StreamSink

    with av.open(str(demo_clip())) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    sink = StreamSink(url, Config())
    sink.open(frames[0].shape[1], frames[0].shape[0], 30.0)
    i = 0
    try:
        while not stop.is_set():
            sink.write(Frame(i, time.monotonic_ns(), "chaos", frames[i % len(frames)]))
            i += 1
            time.sleep(1 / 30)
    finally:
        sink.close()


def _send_other(url: str, stop: Any) -> None:
    """Sender process: another encoder on the same port: MPEG-2 video at 320x240 with its own MPEG-TS PIDs (the
    source must reopen for it, and every output take the new size)."""
    with av.open(url, "w", format="mpegts", options={"mpegts_start_pid": "0x300", "mpegts_pmt_start_pid": "0x1400",
                                                      "mpegts_service_id": "7"}) as container:
        stream = container.add_stream("mpeg2video", rate=30)
        (stream.width, stream.height), stream.pix_fmt = OTHER_SIZE, "yuv420p"
        i = 0
        while not stop.is_set():
            frame = av.VideoFrame.from_ndarray(np.full((*OTHER_SIZE[::-1], 3), (i * 7 % 256, 90, 160), np.uint8),
                                               format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
            i += 1
            time.sleep(1 / 30)


def _junk_burst(url: str, count: int = 300) -> None:
    """Datagrams of random bytes, as a stray sender or a scanner would send, to the UDP source's port."""
    host, port = url.split("://", 1)[1].split("?", 1)[0].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            sock.sendto(os.urandom(200 + i % 1200), (host, int(port)))


class _Sender:
    """The UDP source's encoder, started and stopped to make source outages."""

    def __init__(self, url: str, target: Callable[[str, Any], None] = _send) -> None:
        self.url, self.target, self.process, self.stop = url, target, None, None

    def start(self) -> None:
        self.stop = SPAWN.Event()
        self.process = SPAWN.Process(target=self.target, args=(self.url, self.stop), daemon=True)
        self.process.start()

    def halt(self) -> None:
        if self.process is not None:
            self.stop.set()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
            self.process = None


class _SilentServer:
    """A TCP port that is either closed (refused) or accepts and never answers: the worst RTMP server."""

    def __init__(self, port: int) -> None:
        self.port, self.sock, self.conns = port, None, []

    def up(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                self.conns.append(sock.accept()[0])
            except OSError:
                return

    def down(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for conn in self.conns:
            conn.close()
        self.conns = []


def _make_assets(work: Path) -> dict[str, str]:
    """A good image and video, a video corrupt part-way, and paths that cannot work."""
    import cv2

    image = work / "bg.png"
    cv2.imwrite(str(image), np.full((90, 160, 3), (40, 120, 200), np.uint8))
    video = work / "bg.mp4"
    with av.open(str(video), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(40):
            frame = np.full((64, 64, 3), 6 * i, np.uint8)
            c.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(stream.encode(None))
    corrupt = work / "corrupt.mp4"
    data = bytearray(video.read_bytes())
    third = len(data) // 3
    data[third: 2 * third] = np.random.default_rng(0).integers(0, 256, third, np.uint8).tobytes()
    corrupt.write_bytes(bytes(data))
    junk = work / "junk.png"
    junk.write_bytes(b"\0" * 64)
    wide = work / "wide.png"  # 1.8 KB of PNG, 600000x1 pixels: refused before any decoding or scaling
    cv2.imwrite(str(wide), np.zeros((1, 600_000, 3), np.uint8))
    hdr = work / "huge.hdr"  # a Radiance header claiming 48 MP, a format PIL cannot measure
    hdr.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 6000 +X 8000\n" + bytes(4096))
    return {"image": str(image), "video": str(video), "corrupt": str(corrupt), "junk": str(junk),
            "missing": str(work / "missing.mp4"), "wide": str(wide), "hdr": str(hdr)}


class _Daemon:
    """The daemon under test and its control API."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port, self.log_path = port, log
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "rvm_live", "--config", str(config), "--control",
                                      f"127.0.0.1:{port}"], stderr=self.log)

    def logged(self, text: str) -> int:
        """How many times the daemon's log says ``text`` so far."""
        return self.log_path.read_text(errors="replace").count(text)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except (OSError, ValueError) as exc:
            return 0, {"error": str(exc)}

    def stats(self) -> dict[str, Any]:
        status, body = self.call("GET", "/stats")
        return body if status == 200 else {}

    def rss_mib(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    def stop(self) -> tuple[int | None, float]:
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self.log.close()
        return code, round(time.monotonic() - sent, 2)


def _abuse(port: int) -> None:
    """Control-API abuse: deep JSON, a short body, resets, garbage, an absurd Content-Length."""
    def raw(data: bytes, *, reset: bool = False) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(data)
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return
                s.recv(4096)
        except OSError:
            pass

    deep = b"[" * 50_000
    raw(b"POST /background HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(deep) + deep)
    raw(b"POST /background HTTP/1.0\r\nContent-Length: 100\r\n\r\n{")
    for _ in range(20):
        raw(b"POST /background HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", reset=True)
    raw(b"\x16\x03\x01garbage\r\n\r\n")
    raw(b"POST /pause HTTP/1.0\r\nContent-Length: 99999999999\r\n\r\n")


def _status(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> int:
    """The status of one request (0 when it got none); a streamed answer is not read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def _http_attacks(port: int, seconds: float = 4.0) -> bool:
    """What other web pages and hostile clients try: a foreign Origin or Host, a text/plain "simple request",
    absurd preview rates, and, all at once, slowloris heads, slow uploads and preview viewers that never
    read. True when every defence held: nothing was changed, and the API kept answering throughout."""
    json_type = {"Content-Type": "application/json"}
    held = [_status(port, "POST", "/pause", {"Origin": "http://evil.example", **json_type}, b"{}") == 403,
            _status(port, "POST", "/pause", {"Content-Type": "text/plain"}, b"{}") == 415,
            _status(port, "GET", "/stats", {"Host": f"rebind.example:{port}"}) == 403]
    for fps in ("1e-300", "0.001", "nan"):
        held.append(_status(port, "GET", f"/stream.mjpg?fps={fps}") in (200, 400, 503))  # never a 500
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 64
    upload = b"POST /background/image HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    viewer = b"GET /stream.mjpg?fps=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    slow: list[socket.socket] = []
    try:
        for first, count in ((head[:10], 16), (upload + b"\x89PNG", 20), (viewer, 16)):
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # viewers: never read, fill at once
                sock.sendall(first)
                slow.append(sock)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for sock in slow[:36]:  # one more byte from each slow sender: under a per-read timeout, forever
                try:
                    sock.send(b"x")
                except OSError:
                    pass
            held.append(_status(port, "GET", "/health") == 200)
            time.sleep(0.5)
        held.append(_status(port, "POST", "/resume", json_type, b"{}") == 200)
    finally:
        for sock in slow:
            sock.close()
    return all(held)


def _await(condition: Callable[[], bool], daemon: _Daemon, within: float = RECOVERY_S) -> bool:
    """Poll ``condition`` until it holds (True) or ``within`` seconds pass or the daemon exits (False)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline or daemon.proc.poll() is not None:
            return False
        time.sleep(0.2)
    return True


def _write_config(path: Path, source: str, outputs: list[str], **extra: Any) -> None:
    lines = [f"source = {json.dumps(source)}", f"outputs = {json.dumps(outputs)}", "no_signal_timeout = 0.5",
             "log_level = \"info\""]
    lines += [f"{k} = {json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")


def chaos(seconds: float, *, step_s: float = STEP_S, sample_s: float = 2.0, kinds: list[str] | None = None,
          progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run the chaos soak for ``seconds``; returns the report (see the module docstring). ``kinds`` keeps only
    the faults of those names (all by default), to repeat one kind of fault many times."""
    if kinds is not None and (not kinds or set(kinds) - set(FAULT_KINDS)):
        raise ValueError(f"chaos: fault kinds {kinds!r}: choose from {', '.join(FAULT_KINDS)}")
    work = Path(tempfile.mkdtemp(prefix="rvm-chaos-"))
    assets = _make_assets(work)
    src = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    rtmp = _SilentServer(free_port())
    outputs = ["null", f"rtmp://127.0.0.1:{rtmp.port}/live", f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"]
    config = work / "chaos.toml"
    _write_config(config, src, outputs)
    sender = _Sender(src + "?pkt_size=1316")
    sender.start()
    daemon = _Daemon(config, free_port(), work / "daemon.log")
    faults: dict[str, dict[str, int]] = {}
    samples: list[dict[str, Any]] = []
    start = time.monotonic()

    def sample() -> None:
        stats = daemon.stats()
        samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mib": round(daemon.rss_mib(), 1),
                        "frames_in": stats.get("frames_in"), "frames_out": stats.get("frames_out")})

    def survived() -> bool:
        """Alive, answering, and producing frames again within RECOVERY_S (the source may be back only now)."""
        before = daemon.stats().get("frames_out", 0)
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            if daemon.proc.poll() is not None:
                return False
            if daemon.stats().get("frames_out", 0) > before:
                return True
            time.sleep(0.2)
        return False

    def source_outage() -> None:
        sender.halt()
        time.sleep(step_s / 2)
        sender.start()

    def sink_outage() -> None:
        (rtmp.down if rtmp.sock is not None else rtmp.up)()

    swaps = ["green", assets["image"], assets["video"], assets["corrupt"], assets["junk"], assets["missing"],
             "nonsense", "blur:8", "#ff00ff", assets["wide"], assets["hdr"]]

    def background_swap() -> None:
        spec = swaps[faults.get("background_swap", {}).get("injected", 0) % len(swaps)]
        daemon.call("POST", "/background", json.dumps({"bg": spec}).encode())

    hups = [{"bg": "red"}, {"mask_threshold": "abc"}, {"mirror": True}, {"fps": "inf"}, {"bg": assets["corrupt"]}]

    def sighup() -> None:
        extra = hups[faults.get("sighup", {}).get("injected", 0) % len(hups)]
        _write_config(config, src, outputs, **extra)
        daemon.proc.send_signal(signal.SIGHUP)

    other_sender = _Sender(src + "?pkt_size=1316", _send_other)

    def sender_swap() -> bool:
        """A new encoder (PIDs, codec, size) takes the port over, then the old one is back: the daemon must follow
        each (reopen the source for it, within RECOVERY_S), or the fault is not survived. A fixed wait was too
        short on a busy machine (a spawned sender, then NO_PICTURE_S of blind data): the daemon followed the new
        sender in 0 of 16 swaps of the fourth session's 10-minute run, and in 1 of 14 of the fifth session's
        first run."""
        opened, other = f"opened {src}: ", f"opened {src}: {OTHER_SIZE[0]}x{OTHER_SIZE[1]}"
        before = daemon.logged(other)
        sender.halt()
        other_sender.start()
        taken = _await(lambda: daemon.logged(other) > before, daemon)
        if taken:
            time.sleep(step_s / 2)  # frames of the new size through every output
        reopened = daemon.logged(opened)
        other_sender.halt()
        sender.start()
        return taken and _await(lambda: daemon.logged(opened) > reopened, daemon)

    cycle = [("source_outage", source_outage), ("background_swap", background_swap), ("sink_outage", sink_outage),
             ("sighup", sighup), ("api_abuse", lambda: _abuse(daemon.port)),
             ("http_attacks", lambda: _http_attacks(daemon.port))]
    cycle += [("udp_junk", lambda: _junk_burst(src)), ("sender_swap", sender_swap)]
    assert tuple(name for name, _ in cycle) == FAULT_KINDS
    cycle = [(name, inject) for name, inject in cycle if kinds is None or name in kinds]
    try:
        while not daemon.stats() and daemon.proc.poll() is None and time.monotonic() - start < 300:
            time.sleep(0.5)  # the model loads
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds and daemon.proc.poll() is None:
            name, inject = cycle[n % len(cycle)]
            n += 1
            held = inject()  # an attack says whether its defences held; other faults return None
            ok = survived() and held is not False
            count = faults.setdefault(name, {"injected": 0, "survived": 0})
            count["injected"] += 1
            count["survived"] += ok
            progress(f"{time.monotonic() - start:6.1f} s  {name}: {'survived' if ok else 'NOT survived'}")
            sample()
            next_at = time.monotonic() + step_s / 2
            while time.monotonic() < next_at:
                time.sleep(min(sample_s, max(0.0, next_at - time.monotonic())))
        final = daemon.stats()
    finally:
        code, sigterm_s = daemon.stop()
        sender.halt()
        other_sender.halt()
        rtmp.down()
    warm = [s for s in samples if s["t_s"] >= max(10.0, seconds / 5) and s["rss_mib"]]
    growth = round(100 * (warm[-1]["rss_mib"] - warm[0]["rss_mib"]) / warm[0]["rss_mib"], 2) if len(warm) > 1 else None
    return {"seconds": seconds, "frames_in": final.get("frames_in"), "frames_out": final.get("frames_out"),
            "faults": faults, "all_survived": all(f["survived"] == f["injected"] for f in faults.values()),
            "exit_code": code, "sigterm_to_exit_s": sigterm_s, "rss_growth_pct_after_warmup": growth,
            "rss_mib_max": max((s["rss_mib"] for s in samples), default=None), "samples": samples,
            "log": str(work / "daemon.log")}
