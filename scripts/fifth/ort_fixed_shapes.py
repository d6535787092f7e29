"""onnxruntime: the low-resolution network with dynamic vs fixed input shapes (graph optimisation for fixed
# Run from the repository root: python scripts/fifth/<name>.py ARGS (figures and commands: BENCHMARKS.md, fifth session).
shapes), 2 threads, state carried, median of 15 calls, interleaved rounds; OpenVINO bf16 alongside for scale."""
import statistics as st
import sys
import time

import numpy as np
import onnx

from rvm_live.assets import cache_dir
from rvm_live.engine.lowres import downsample, lowres_model
from rvm_live.engine.openvino import OpenVinoCoefficients
from rvm_live.engine.ort import cpu_session, state_feed
from rvm_live.io.sources.stream import StreamSource

path = str(cache_dir() / "rvm_mobilenetv3_fp32.onnx")
src = StreamSource(sys.argv[1]); src.open(); frames = [src.read() for _ in range(20)]; src.close()
base = lowres_model(path)
def fixed(model, shapes):
    m = onnx.ModelProto(); m.CopyFrom(model)
    for inp in m.graph.input:
        for d, v in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
            d.ClearField("dim_param"); d.dim_value = v
    return m.SerializeToString()
results = {}
for px in (384, 256):
    ratio = px / 1280
    smalls = [downsample(f[None].astype(np.float32), ratio) for f in frames]
    dyn = cpu_session(base.SerializeToString(), 2)
    names = [o.name for o in dyn.get_outputs()]
    out = dyn.run(None, {base.graph.input[0].name: smalls[0], **state_feed([None] * 4)})
    rec = out[2:]
    shapes = {base.graph.input[0].name: smalls[0].shape, **{n: r.shape for n, r in zip(("r1i", "r2i", "r3i", "r4i"), rec)}}
    sta = cpu_session(fixed(base, shapes), 2)
    ov = OpenVinoCoefficients(path, precision="bf16", threads=2)
    for _ in range(3): ov(smalls[0], rec)
    time.sleep(3)
    def run_ort(sess):
        state = list(rec)
        def step(i):
            nonlocal state
            o = sess.run(None, {base.graph.input[0].name: smalls[i % 20], **state_feed(state)})
            state = o[2:]
        return step
    def run_ov():
        state = list(rec)
        def step(i):
            nonlocal state
            _, _, state = ov(smalls[i % 20], state)
        return step
    runners = {"ort dynamic": run_ort(dyn), "ort fixed shapes": run_ort(sta), "openvino-bf16": run_ov()}
    # same result?
    a = dyn.run(None, {base.graph.input[0].name: smalls[1], **state_feed(rec)})[0]
    b = sta.run(None, {base.graph.input[0].name: smalls[1], **state_feed(rec)})[0]
    print(px, "max |A dynamic - A fixed|", float(np.abs(a - b).max()), flush=True)
    for r in range(3):
        for name, step in runners.items():
            for i in range(3): step(i)
            wall, cpu = [], []
            for i in range(15):
                w, c = time.perf_counter(), time.process_time(); step(i)
                wall.append((time.perf_counter() - w) * 1e3); cpu.append((time.process_time() - c) * 1e3)
            results.setdefault((px, name), []).append((round(st.median(wall), 1), round(st.median(cpu), 1)))
            time.sleep(0.2)
for (px, name), v in results.items():
    print(f"{px}  {name:18s} wall/cpu ms per round {v}")
