"""How soon the first picture comes after an RTMP publisher connects, for several probe settings
(``python scripts/rtmp_probe.py [ROUNDS]``): the demuxer in FFmpeg's RTMP listen mode, rvm-live's own StreamSink
publishing 640x360 noise at 30 fps; the settings are interleaved within each round."""

import multiprocessing as mp
import sys
import time

from udp_resume import send_noise  # scripts/ is on the path when a script runs

from rvm_live.io._av import av
from rvm_live.tools.chaos import free_port

SETTINGS = [("nobuffer", "1000000"), ("", "1000000"), ("", "200000"), ("", "33000"), ("nobuffer", "33000")]


if __name__ == "__main__":
    spawn = mp.get_context("spawn")
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        for fflags, probe in SETTINGS:
            url = f"rtmp://127.0.0.1:{free_port()}/live/x"
            stop, out = spawn.Event(), spawn.Queue()
            publisher = spawn.Process(target=send_noise, args=(url, stop, out))
            publisher.start()
            options = {"listen": "1", "probesize": "500000", "analyzeduration": probe, "flags": "low_delay"}
            if fflags:
                options["fflags"] = fflags
            with av.open(url, format="flv", options=options, timeout=(20, 10)) as container:
                next(container.decode(video=0))
                first = time.time()
            results.setdefault((fflags or "-", probe), []).append(round(first - out.get(timeout=10), 3))
            stop.set()
            publisher.join(10)
    for (fflags, probe), seconds in results.items():
        print(f"fflags={fflags:9s} analyzeduration={probe:>8s}: {seconds}")
