"""The prepared GPU check (``python -m rvm_live.tools.gpu_check --out gpu_check.json``): GPU tests and GPU benchmarks.

Sized for one H100 in under 8 minutes: ``pytest -m gpu``, then the bench at 1920x1080 and 3840x2160
(MobileNetV3, fp16, official weights), 1920x1080 ResNet50 fp16 with *random weights* (speed does not depend
on the weights; the official ResNet50 file may not be reachable from the GPU machine) and the 1280x720
roundtrip latency (upload, inference, composite, download). Everything lands in one JSON file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .bench import run_bench
from .common import machine_info

# (label, run_bench kwargs); frame counts keep the whole check well under 8 minutes on an H100
RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mobilenetv3_1920x1080_fp16", {"width": 1920, "height": 1080, "frames": 300, "end_to_end": True}),
    ("mobilenetv3_3840x2160_fp16", {"width": 3840, "height": 2160, "frames": 150, "end_to_end": False}),
    ("resnet50_random_1920x1080_fp16", {"width": 1920, "height": 1080, "frames": 200, "end_to_end": False,
                                        "backbone": "resnet50"}),
    ("mobilenetv3_1280x720_fp16_roundtrip", {"width": 1280, "height": 720, "frames": 300, "end_to_end": False}),
)


def run_gpu_tests(timeout: float) -> dict[str, Any]:
    """``pytest -m gpu`` in a child process; its exit code and the summary line."""
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-500:],
            "seconds": round(time.monotonic() - start, 1)}


def fp16_fidelity(width: int = 1280, height: int = 720, frames: int = 60) -> dict[str, Any]:
    """fp16 (graphs) against fp32 (eager) alpha on the demo clip at ``width x height``; targets from issue 8."""
    from ..engine.matter import Matter
    from .common import bench_frames

    clip = bench_frames(width, height, frames)
    fp32 = Matter(device="cuda", fp16=False, cuda_graphs=False)
    fp16 = Matter(device="cuda", fp16=True)
    total, worst = 0.0, 0.0
    for frame in clip:
        diff = (fp32.step(frame)[1].float() - fp16.step(frame)[1].float()).abs()
        total += float(diff.mean())
        worst = max(worst, float(diff.max()))
    mean = total / len(clip)
    return {"size": f"{width}x{height}", "frames": len(clip), "mean_abs_diff": round(mean, 6),
            "max_abs_diff": round(worst, 6), "pass": mean <= 2e-3 and worst <= 5e-2}


def chunk_interplay(width: int = 1280, height: int = 720, frames: int = 48) -> dict[str, Any]:
    """A bursty file job: single graph steps and 4-frame eager chunks alternate on one Matter. Counts the
    graphs captured (1 expected: chunks write back into the graph's state) and compares the alpha with a
    Matter that steps every frame through its graph."""
    import numpy as np

    from ..engine.matter import Matter
    from .common import bench_frames

    clip = bench_frames(width, height, frames)
    mixed, graphed = Matter(device="cuda"), Matter(device="cuda")
    graphs: list[object] = []
    worst, i = 0.0, 0
    while i < len(clip):
        n = 4 if (i // 4) % 2 else 1
        pha = mixed.step_chunk(np.stack(clip[i:i + n]))[1] if n > 1 else mixed.step(clip[i])[1]
        graphs += [g for g in mixed.engine.graphs.values() if all(g is not seen for seen in graphs)]
        reference = torch.cat([graphed.step(f)[1].float().clone() for f in clip[i:i + n]])
        worst = max(worst, float((pha.float() - reference).abs().max()))
        i += n
    return {"frames": len(clip), "graphs_captured": len(graphs), "max_abs_diff_vs_graph_steps": round(worst, 6)}


def _guarded(target: dict[str, Any], key: str, step: Callable[[], dict[str, Any]], save: Callable[[], object]) -> None:
    """Run one check into ``target[key]`` (its error instead, if it fails), then ``save()`` at once."""
    start = time.monotonic()
    try:
        result = step()
    except Exception as exc:  # record and go on: one failing step must not hide the others
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - start, 1)
    target[key] = result
    save()  # partial results survive a timeout or a crash in a later step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvm_live.tools.gpu_check", description=__doc__)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.stderr.write("gpu_check: no CUDA device\n")
        return 2
    report: dict[str, Any] = {"machine": machine_info(), "runs": {}}
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(report, indent=2))

    if not args.skip_tests:
        report["pytest_gpu"] = run_gpu_tests(timeout=180)
        out.write_text(json.dumps(report, indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        from ..model.network import MattingNetwork

        torch.manual_seed(0)
        random_resnet = Path(tmp) / "random_resnet50.pth"
        torch.save(MattingNetwork("resnet50").state_dict(), random_resnet)
        for label, kwargs in RUNS:
            if kwargs.get("backbone") == "resnet50":
                kwargs = {**kwargs, "weights": str(random_resnet)}
            _guarded(report["runs"], label, lambda kw=kwargs: run_bench(device="cuda", fp16=True, onnx=False, **kw),
                     save)
            result = report["runs"][label]
            sys.stdout.write(f"{label}: {json.dumps({k: result.get(k) for k in ('model', 'roundtrip', 'error')})}\n")
    _guarded(report, "fp16_fidelity_1280x720", fp16_fidelity, save)
    _guarded(report, "chunk_interplay_1280x720", chunk_interplay, save)
    sys.stdout.write(f"wrote {out}\n")
    return 0 if report.get("pytest_gpu", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
