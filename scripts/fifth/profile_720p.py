"""Per-frame cost of the live 720p pipeline's parts on this machine: wall ms and CPU ms (all threads), median of
# Run from the repository root: python scripts/fifth/<name>.py ARGS (figures and commands: BENCHMARKS.md, fifth session).
N calls, interleaved rounds. python profile720.py CLIP.mp4"""
import statistics as st
import sys
import time

from rvm_live.engine.core import Engine
from rvm_live.engine.state import StreamState
from rvm_live.io.sources.stream import StreamSource

clip = sys.argv[1]
src = StreamSource(clip); src.open()
frames = [src.read() for _ in range(40)]
src.close()
H, W = frames[0].shape[:2]
engines = {name: Engine(runtime=name, fullres="fast", threads=2) for name in ("openvino-bf16", "openvino-int8")}
plan = engines["openvino-bf16"].plan("green")

def timed(fn, n=15):
    wall, cpu = [], []
    for i in range(n):
        w, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append((time.perf_counter() - w) * 1e3); cpu.append((time.process_time() - c) * 1e3)
    return round(st.median(wall), 1), round(st.median(cpu), 1)

states = {}
for name, eng in engines.items():  # warm up every shape (static models compile in the background)
    for px in (384, 320, 256):
        s = states[name, px] = StreamState(round(px / W, 4))
        for i in range(6): eng.infer([frames[i]], [s])
time.sleep(8)
rows = {}
def decode(_):
    s = StreamSource(clip); s.open()
    for _ in range(10): s.read()
    s.close()
for rnd in range(3):
    rows.setdefault("decode+rgb x10 (incl. open)", []).append(timed(decode, 3))
    for name, eng in engines.items():
        for px in (384, 320, 256):
            s = states[name, px]
            rows.setdefault(f"{name} infer {px}", []).append(timed(lambda i: eng.infer([frames[i % 40]], [s])))
    m = engines["openvino-bf16"].infer([frames[0]], [states["openvino-bf16", 384]])
    rows.setdefault("render 720p green", []).append(timed(lambda i: engines["openvino-bf16"].render(m, [plan])))
for k, v in rows.items():
    print(f"{k:34s} wall/cpu ms per round: {v}")
