"""How soon a UDP source shows frames again after its sender comes back (issue 12's "resume within 0.5 s of
the first packet"). ``python scripts/udp_resume.py [ROUNDS]`` prints one JSON object.

Each round: the source is waiting (its sender gone), a new sender process starts (rvm-live's own StreamSink,
H.264 in MPEG-TS, 640x360 noise at 30 fps), its packets pass through a relay here that notes the arrival of the
first one, and the time until ``StreamSource.read()`` returns a picture is taken. Then the sender stops and
the source is left to notice the silence, as a daemon's capture thread would.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np

from rvm_live.errors import SourceError, SourceNotReady
from rvm_live.io.sources.stream import StreamSource
from rvm_live.tools.chaos import free_port


def send_noise(url: str, stop: threading.Event, opened: Any = None) -> None:
    """Child process: 640x360 noise at 30 fps through rvm-live's own StreamSink until ``stop``; puts the wall
    clock on ``opened`` (a queue) once connected."""
    from rvm_live.config import Config
    from rvm_live.frame import Frame
    from rvm_live.io.sinks.stream import StreamSink

    rng = np.random.default_rng(0)
    sink = StreamSink(url, Config())
    sink.open(640, 360, 30.0)
    if opened is not None:
        opened.put(time.time())
    index = 0
    while not stop.is_set():
        image = rng.integers(0, 256, (360, 640, 3), np.uint8)
        sink.write(Frame(index, time.monotonic_ns(), "sender", image))
        index += 1
        time.sleep(1 / 30)
    sink.close()


def _relay(inbound: int, outbound: int, first: list[float], stop: threading.Event) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET,
                                                                               socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", inbound))
        rx.settimeout(0.05)
        while not stop.is_set():
            try:
                data = rx.recv(65536)
            except TimeoutError:
                continue
            if not first:
                first.append(time.monotonic())
            tx.sendto(data, ("127.0.0.1", outbound))


def main(rounds: int = 5) -> dict[str, object]:
    spawn = mp.get_context("spawn")
    target, relay_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    source = StreamSource(f"udp://127.0.0.1:{target}", read_timeout=1.0)
    stop_relay = threading.Event()
    resumes = []
    try:
        for _ in range(rounds):
            first: list[float] = []
            relay = threading.Thread(target=_relay, args=(relay_port, target, first, stop_relay), daemon=True)
            relay.start()
            stop = spawn.Event()
            sender = spawn.Process(target=send_noise, args=(f"udp://127.0.0.1:{relay_port}?pkt_size=1316", stop))
            sender.start()
            while True:  # the capture stage's reconnection loop
                try:
                    source.open()
                    break
                except SourceNotReady:
                    continue
            source.read()
            resumes.append(time.monotonic() - first[0])
            stop.set()
            sender.join(10)
            stop_relay.set()
            relay.join()
            stop_relay.clear()
            try:
                while source.read() is not None:  # until the silence is noticed
                    pass
            except SourceError:
                pass
            source.suspend()
    finally:
        source.close()
    return {"rounds": rounds, "resume_s": [round(r, 3) for r in resumes],
            "median_s": round(statistics.median(resumes), 3), "max_s": round(max(resumes), 3)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
