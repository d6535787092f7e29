"""OpenVINO at a new size: the first calls (dynamic model while the static one compiles or loads) against the steady ones."""
# Run from the repository root: python scripts/fifth/openvino_new_shape.py CLIP.mp4
import statistics as st
import sys
import time

import cv2
import numpy as np

from rvm_live.assets import cache_dir
from rvm_live.engine.lowres import downsample
from rvm_live.engine.openvino import OpenVinoCoefficients
from rvm_live.io.sources.stream import StreamSource

src = StreamSource(sys.argv[1]); src.open(); frames = [src.read() for _ in range(10)]; src.close()

frames = [cv2.resize(f, (640, 360)) for f in frames]
ov = OpenVinoCoefficients(str(cache_dir() / "rvm_mobilenetv3_fp32.onnx"), precision="bf16", threads=2,
                          cache_dir=cache_dir() / "openvino")
for ratio in (0.45, 0.5, 0.6):
    smalls = [downsample(f[None].astype(np.float32), ratio) for f in frames]
    _, _, rec = ov(smalls[0], [None] * 4)
    t0 = time.perf_counter()
    times = []
    state = rec
    for i in range(40):  # the first calls run the dynamic model while the static one compiles / loads
        s = time.perf_counter(); _, _, state = ov(smalls[i % 10], state); times.append((time.perf_counter() - s) * 1e3)
        time.sleep(0.02)
    key_ready = len(ov._static)
    print(ratio, "first 8 calls", [round(t) for t in times[:8]], "last 10 median", round(st.median(times[-10:]), 1), "static models", key_ready, flush=True)
