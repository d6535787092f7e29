"""A file job's engine cost per frame (Engine.infer + Engine.render, RVM's ratio, 2 threads), the engines a file job
could run, interleaved: median of 10 frames per round, 3 rounds. python scripts/fifth/file_engines.py CLIP.mp4"""
import statistics as st
import sys
import time

import cv2
import torch

from rvm_live.engine.core import Engine
from rvm_live.io.sources.stream import StreamSource

torch.set_num_threads(2)
src = StreamSource(sys.argv[1])
src.open()
clip = [src.read() for _ in range(30)]
src.close()
settings = {"torch fp32 exact": dict(runtime="torch", fullres="exact"),
            "openvino fp32 fast": dict(runtime="openvino", fullres="fast"),
            "openvino-bf16 fast": dict(runtime="openvino-bf16", fullres="fast"),
            "torch bf16 exact": dict(runtime="torch", fullres="exact", bf16=True)}
engines = {name: Engine(device="cpu", threads=2, **kw) for name, kw in settings.items()}
for size in ((640, 360), (1280, 720)):
    frames = [cv2.resize(f, size) for f in clip]
    states = {name: e.new_state("auto") for name, e in engines.items()}
    plans = {name: e.plan("green") for name, e in engines.items()}
    times = {name: [] for name in engines}
    for name, e in engines.items():  # warm up (OpenVINO compiles its static model meanwhile)
        for f in frames[:5]:
            e.render(e.infer([f], [states[name]]), [plans[name]])
        getattr(e._coefficients, "wait_compiled", lambda *a: True)(60)
    for rnd in range(3):
        for name, e in engines.items():
            spent = []
            for f in frames[5 + rnd * 8: 15 + rnd * 8]:
                t = time.perf_counter()
                e.render(e.infer([f], [states[name]]), [plans[name]])
                spent.append((time.perf_counter() - t) * 1e3)
            times[name].append(round(st.median(spent), 1))
    for name, v in times.items():
        print(f"{size[0]}x{size[1]}  {name:20s} ms per frame by round {v}", flush=True)
