"""The CPU fast path with its render on the inference thread or on the render thread, interleaved, at a fixed
ratio: ``python scripts/pipeline_ab.py W H RATIO ROUNDS`` prints one JSON line per 20 s live run."""

import json
import sys

from rvm_live.runtime.render import RenderStage
from rvm_live.tools.livebench import run_live_bench

width, height, ratio, rounds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
downsample = ratio if ratio == "auto" else float(ratio)
threaded = RenderStage.submit


def inline(self, job):  # the serial path: each render runs on the inference thread when handed over
    return job()


for _ in range(rounds):
    for pipelined in (False, True):
        RenderStage.submit = threaded if pipelined else inline
        report = run_live_bench(width=width, height=height, seconds=20, fullres="fast", downsample=downsample,
                                fidelity_frames=0)
        print(json.dumps({"pipelined": pipelined, "fps_out": report["fps_out"],
                          "p50": report["latency_ms"]["p50"], "p95": report["latency_ms"]["p95"],
                          "dropped": report["frames_dropped"], "cores": report["cores_used"]}), flush=True)
