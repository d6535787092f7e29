"""The prepared GPU check, run by scripts/gpu_run.sh on a lent GPU (issue 23): ``python -m rvm_live.tools.gpu_check``.

Subcommands (``check`` is the default, so ``gpu_check --out gpu_check.json`` still works):

- ``check --out gpu_check.json``: model-only fps of MobileNetV3 fp16 at 1920x1080 and 3840x2160 (official
  weights), ResNet50 fp16 at 1920x1080 with *random weights* (speed does not depend on them; the official file
  cannot be had offline), the 1280x720 roundtrip (upload, network, composite, download), fp16 against fp32
  alpha on the demo clip at 1280x720, and a bursty graph/chunk file job. The JSON is rewritten after each part.
- ``preflight --out preflight.json``: the machine (Python, torch, CUDA, the card) and which modules import.
- ``clips DIR --size WxH ... --frames N``: the demo clip scaled to each size, as H.264 files for the daemon steps.
- ``summary DIR --out results.json``: every JSON under ``DIR`` in one file, each target of issue 23 judged.

``check --device cpu --tiny`` runs the same code on the CPU at 64x48 with a few frames: the recipe's simulation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (label, run_bench kwargs); frame counts keep the check well under its 150 s limit on an H100
RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mobilenetv3_1920x1080_fp16", {"width": 1920, "height": 1080, "frames": 300, "end_to_end": True}),
    ("mobilenetv3_3840x2160_fp16", {"width": 3840, "height": 2160, "frames": 150, "end_to_end": False}),
    ("resnet50_random_1920x1080_fp16", {"width": 1920, "height": 1080, "frames": 200, "end_to_end": False,
                                        "backbone": "resnet50"}),
    ("mobilenetv3_1280x720_fp16_roundtrip", {"width": 1280, "height": 720, "frames": 300, "end_to_end": False}),
)
TINY = {"width": 64, "height": 48, "frames": 3}  # --tiny: every run at this size (the CPU simulation)

# issue 23's targets: (what, file stem in the run's folder, path in that JSON, "min" or "max", bound)
TARGETS: tuple[tuple[str, str, tuple[str, ...], str, float], ...] = (
    ("MobileNetV3 fp16 1080p model-only fps", "gpu_check", ("runs", RUNS[0][0], "model", "fps"), "min", 500),
    ("MobileNetV3 fp16 4K model-only fps", "gpu_check", ("runs", RUNS[1][0], "model", "fps"), "min", 150),
    ("ResNet50 fp16 1080p model-only fps", "gpu_check", ("runs", RUNS[2][0], "model", "fps"), "min", 250),
    ("720p upload-network-composite-download p50 ms", "gpu_check",
     ("runs", RUNS[3][0], "roundtrip", "latency_ms", "p50"), "max", 2.0),
    ("live 1080p30: frames lost (in - out)", "live_1920x1080", ("lost",), "max", 0),
    ("live 1080p30: p95 ms", "live_1920x1080", ("latency_ms", "p95"), "max", 50.0),
    ("720p30 streams held at 30 fps in one process", "streams", ("held",), "min", 16),
    ("fp16 vs fp32 mean |d alpha|, demo clip 720p", "gpu_check", ("fp16_fidelity_1280x720", "mean_abs_diff"),
     "max", 2e-3),
    ("fp16 vs fp32 max |d alpha|, demo clip 720p", "gpu_check", ("fp16_fidelity_1280x720", "max_abs_diff"),
     "max", 5e-2),
)
HELD_SHARE = 0.97  # a stream is "held at 30 fps" when the N streams together deliver this share of N x 30
# what the recipe imports on the GPU machine: the machine's own packages, or the carried wheels (gpu_prepare.sh)
MODULES = ("torch", "numpy", "cv2", "PIL", "onnxruntime", "onnx", "tqdm", "prometheus_client", "av", "platformdirs",
           "pyvirtualcam", "pytest", "openvino", "ray")


def fp16_fidelity(width: int = 1280, height: int = 720, frames: int = 60, device: str = "cuda") -> dict[str, Any]:
    """fp16 (graphs) against fp32 (eager) alpha on the demo clip at ``width x height`` (issue 23's target)."""
    from ..engine.matter import Matter
    from .common import bench_frames

    clip = bench_frames(width, height, frames)
    fp32 = Matter(device=device, fp16=False, cuda_graphs=False)
    fp16 = Matter(device=device, fp16=True)
    total, worst = 0.0, 0.0
    for frame in clip:
        diff = (fp32.step(frame)[1].float() - fp16.step(frame)[1].float()).abs()
        total += float(diff.mean())
        worst = max(worst, float(diff.max()))
    mean = total / len(clip)
    return {"size": f"{width}x{height}", "frames": len(clip), "dtype": str(fp16.dtype).removeprefix("torch."),
            "mean_abs_diff": round(mean, 6), "max_abs_diff": round(worst, 6),
            "pass": mean <= 2e-3 and worst <= 5e-2}


def chunk_interplay(width: int = 1280, height: int = 720, frames: int = 48, device: str = "cuda") -> dict[str, Any]:
    """A bursty file job: single graph steps and 4-frame eager chunks alternate on one Matter. Counts the
    graphs captured (1 expected on CUDA: chunks write back into the graph's state) and compares the alpha with
    a Matter that steps every frame through its graph."""
    import numpy as np
    import torch

    from ..engine.matter import Matter
    from .common import bench_frames

    clip = bench_frames(width, height, frames)
    mixed, graphed = Matter(device=device), Matter(device=device)
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


def run_check(out: Path, *, device: str = "cuda", tiny: bool = False) -> dict[str, Any]:
    """Every part of ``check`` into ``out`` (rewritten after each part); returns the report. The torch engine
    throughout: what auto picks on CUDA, and on the CPU (the simulation) the one these weights can run."""
    import torch

    from ..model.network import MattingNetwork
    from .bench import run_bench
    from .common import machine_info

    report: dict[str, Any] = {"machine": machine_info(), "device": device, "tiny": tiny, "runs": {}}

    def save() -> None:
        out.write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="rvm-gpu-check-") as tmp:
        torch.manual_seed(0)
        random_resnet = Path(tmp) / "random_resnet50.pth"
        torch.save(MattingNetwork("resnet50").state_dict(), random_resnet)
        for label, kwargs in RUNS:
            kwargs = {**kwargs, **(TINY if tiny else {})}
            if kwargs.get("backbone") == "resnet50":
                kwargs["weights"] = str(random_resnet)
            _guarded(report["runs"], label,
                     lambda kw=kwargs: run_bench(device=device, fp16=True, onnx=False, engine="torch", **kw), save)
            result = report["runs"][label]
            sys.stdout.write(f"{label}: {json.dumps({k: result.get(k) for k in ('model', 'roundtrip', 'error')})}\n")
    size = {"width": TINY["width"], "height": TINY["height"], "frames": 8} if tiny else {}
    _guarded(report, "fp16_fidelity_1280x720", lambda: fp16_fidelity(device=device, **size), save)
    _guarded(report, "chunk_interplay_1280x720", lambda: chunk_interplay(device=device, **size), save)
    report["failed"] = failures(report)
    save()
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """The parts of a ``check`` report that failed: an error, or a row the bench could not time (its reason in
    the row); a skipped row (``--no-e2e``, onnxruntime off) is no failure."""
    failed = [key for key in ("fp16_fidelity_1280x720", "chunk_interplay_1280x720") if "error" in report.get(key, {})]
    for label, run in report["runs"].items():
        untimed = any((run.get(row) or {}).get("available") is False for row in ("model", "roundtrip"))
        pipeline_failed = str((run.get("end_to_end") or {}).get("reason", "")).startswith("failed")
        if "error" in run or untimed or pipeline_failed:
            failed.append(label)
    return failed


def preflight() -> dict[str, Any]:
    """Python, torch, CUDA and the card, and which of :data:`MODULES` import here (and from where)."""
    import platform

    found = {}
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        found[name] = spec.origin if spec is not None else None
    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                            "platform": platform.platform(), "modules": found}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": props.name, "memory_mib": props.total_memory // 2**20,
                           "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version()}
    except Exception as exc:  # the preflight reports, it never fails
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    return info


def make_clips(folder: Path, sizes: list[tuple[int, int]], frames: int, fps: int = 30) -> list[Path]:
    """``folder/clip_WxH.mp4`` for each size: ``frames`` frames of the demo clip scaled, at ``fps``."""
    from .common import bench_frames, encode_clip

    folder.mkdir(parents=True, exist_ok=True)
    return [encode_clip(bench_frames(w, h, frames), folder / f"clip_{w}x{h}.mp4", fps=fps) for w, h in sizes]


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _derived(results: dict[str, Any]) -> None:
    """The figures the targets read that no tool writes as such: frames lost by a live run, streams held."""
    for name, stats in results.items():
        if name.startswith("live_") and isinstance(stats, dict) and "frames_in" in stats:
            stats["lost"] = stats["frames_in"] - stats["frames_out"]
    streams = results.get("streams")
    if isinstance(streams, dict) and "rows" in streams:
        fps = streams.get("settings", {}).get("fps", 30.0)
        held = [row["streams"] for row in streams["rows"]
                if row["daemon"]["total_fps"] >= HELD_SHARE * row["streams"] * fps]
        streams["held"] = max(held, default=0)


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`TARGETS` against ``results`` (file stem -> its JSON): measured, bound, met (None: missing)."""
    verdicts = []
    for what, stem, path, kind, bound in TARGETS:
        value = _at(results.get(stem), path)
        met = None if not isinstance(value, (int, float)) else (value >= bound if kind == "min" else value <= bound)
        verdicts.append({"target": what, "measured": value, kind: bound, "met": met})
    return verdicts


def summarize(folder: Path) -> dict[str, Any]:
    """Every ``*.json`` under ``folder`` by file stem (unreadable ones as their error), the step log, the verdicts."""
    results: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            results[path.stem] = {"error": f"{type(exc).__name__}: {exc}"}
    _derived(results)
    steps = folder / "steps.txt"
    return {"steps": steps.read_text().splitlines() if steps.is_file() else [], "targets": judge(results),
            "results": results}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    """The subcommands' parser (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m rvm_live.tools.gpu_check", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="the GPU benchmarks and checks")
    check.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    check.add_argument("--device", default="cuda", help="cuda, cuda:N; cpu (with --tiny) to check the recipe")
    check.add_argument("--tiny", action="store_true", help=f"every run at {TINY['width']}x{TINY['height']}, "
                                                           f"{TINY['frames']} frames (a dry run on the CPU)")
    pre = sub.add_parser("preflight", help="the machine and which modules import")
    pre.add_argument("--out", type=Path, default=Path("preflight.json"))
    clips = sub.add_parser("clips", help="the demo clip scaled, as H.264 files clip_WxH.mp4")
    clips.add_argument("folder", type=Path)
    clips.add_argument("--size", type=_size, action="append", required=True, metavar="WxH")
    clips.add_argument("--frames", type=int, default=240)
    clips.add_argument("--fps", type=int, default=30)
    summary = sub.add_parser("summary", help="every JSON of a run's folder in one, with issue 23's targets judged")
    summary.add_argument("folder", type=Path)
    summary.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand: 0, or 2 when ``check`` has no such device, 1 when a part of it failed (its error is in
    the JSON, next to what the other parts measured)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("check", "preflight", "clips", "summary", "-h", "--help"):
        argv.insert(0, "check")
    args = build_parser().parse_args(argv)
    if args.command == "preflight":
        args.out.write_text(json.dumps(preflight(), indent=2) + "\n")
    elif args.command == "clips":
        for path in make_clips(args.folder, args.size, args.frames, args.fps):
            sys.stdout.write(f"wrote {path}\n")
    elif args.command == "summary":
        report = summarize(args.folder)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        for verdict in report["targets"]:
            met = {True: "met", False: "MISSED", None: "not measured"}[verdict["met"]]
            sys.stdout.write(f"{verdict['target']}: {verdict['measured']} ({met})\n")
    else:
        from ..engine.loading import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as exc:
            sys.stderr.write(f"gpu_check: {exc}\n")
            return 2
        report = run_check(args.out, device=args.device, tiny=args.tiny)
        sys.stdout.write(f"wrote {args.out}; failed: {', '.join(report['failed']) or 'nothing'}\n")
        return 1 if report["failed"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
