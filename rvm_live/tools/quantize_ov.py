"""int8 with mixed precision for OpenVINO's CPU plugin: the low-resolution network (the official export cut by
:mod:`rvm_live.engine.lowres`) with the layers int8 hurts kept in float.

The model is a QDQ ONNX made by onnxruntime's static quantization, calibrated on real frames of the demo clip
with the fp32 recurrent state carried, at three internal sizes; OpenVINO reads the QuantizeLinear/
DequantizeLinear pairs and runs the convolutions between them on its int8 (VNNI) kernels, the rest in the
float precision it is told. Only convolutions are quantized (element-wise int8 saves little and costs
accuracy); the parts kept in float are chosen by measurement (BENCHMARKS.md, "int8 with mixed precision on
OpenVINO"): the stem alone, quantized, moves alpha as much as the whole network quantized, and the next two
blocks (at 1/2 and 1/4 of the input) most of what is left; the rest of the encoder was no faster in int8 on the
CPU measured (its depthwise and squeeze-excite blocks gain reorders), so the whole encoder stays in float; the
decoder, its ConvGRUs and output convolutions (where the time goes) take int8 well; the projection and the
guided filter's box filters (variances, which int8 ruins) are cheap and stay in float.

The recipe is pinned (:data:`RECIPE`); the model is made on demand into the cache under a name carrying the
recipe's digest (a changed recipe never reuses an old file). ``python -m rvm_live.tools.quantize_ov`` makes it
and measures its alpha against fp32 and its speed against the fp32 and bf16 models, interleaved.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.lowres import lowres_model
from ..engine.ort import STATE_INPUTS
from .quantize import calibration_feeds, recipe_digest, recipe_frames

log = logging.getLogger(__name__)

GROUPS = ("stem", "head", "encoder", "gru", "decoder", "projection", "refiner")
# Calibration: the second half of the demo clip, every second frame, at 640x360 and three ratios (internal
# 480x270, 384x216, 256x144: the live ladder's range), each run as a stream with its state carried.
RECIPE = {"clip": "carphone", "frames": [60, 120, 2], "size": [640, 360], "ratios": [0.75, 0.6, 0.4],
          "format": "QDQ", "ops": ["Conv"], "activations": "QUInt8", "weights": "QInt8", "per_channel": True,
          "reduce_range": False, "method": "MinMax", "head": 5,
          "float": ["stem", "head", "encoder", "projection", "refiner"],
          "version": 2}


def layer_groups(model, head: int = 5) -> dict[str, list[str]]:
    """Names of the cut network's convolutions by part, found by structure: ``stem`` (the first), ``head`` (the
    next ``head`` ones: MobileNetV3's first two blocks, at 1/2 and 1/4 of the input), ``encoder`` (the rest
    before the first node reading a recurrent state, LR-ASPP included), ``gru`` (the ConvGRU gates:
    a Sigmoid or Tanh follows), ``decoder`` (the decoder's other convolutions), ``projection`` (the last one
    before the refiner), ``refiner`` (the guided filter's, from the ReduceMean of the input on)."""
    nodes = list(model.graph.node)
    try:
        decoder_start = next(i for i, n in enumerate(nodes) if set(STATE_INPUTS) & set(n.input))
        refiner_start = next(i for i, n in enumerate(nodes) if n.op_type == "ReduceMean")
    except StopIteration:
        raise ValueError("not the cut RVM network (no recurrent input or no refiner)") from None
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    convs = [(i, n) for i, n in enumerate(nodes) if n.op_type == "Conv"]
    encoder = [n.name for i, n in convs if i < decoder_start]
    decoder = [n for i, n in convs if decoder_start <= i < refiner_start]
    groups: dict[str, list[str]] = {"stem": encoder[:1], "head": encoder[1:1 + head],
                                    "encoder": encoder[1 + head:], "gru": [], "decoder": [],
                                    "projection": [decoder[-1].name],
                                    "refiner": [n.name for i, n in convs if i >= refiner_start]}
    for node in decoder[:-1]:
        gate = {"Sigmoid", "Tanh"} & set(consumers.get(node.output[0], []))
        groups["gru" if gate else "decoder"].append(node.name)
    return groups


def quantize_mixed(source: str | Path, dest: str | Path, frames: np.ndarray, recipe: dict | None = None) -> Path:
    """Write the mixed-precision QDQ low-resolution network for ``source`` to ``dest``, calibrated on ``frames``
    (uint8 ``[N,H,W,3]``, already at the recipe's size) at each of the recipe's ratios."""
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    recipe = RECIPE if recipe is None else recipe
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)  # before the minute of calibration, not after
    model = lowres_model(source)
    if model.opset_import[0].version < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        model = version_converter.convert_version(model, 13)
    groups = layer_groups(model, recipe["head"])
    unknown = set(recipe["float"]) - set(GROUPS)
    if unknown:
        raise ValueError(f"recipe: unknown layer group(s) {sorted(unknown)}; expected some of {', '.join(GROUPS)}")
    keep_float = [name for group in recipe["float"] for name in groups[group]]
    blob = model.SerializeToString()
    feeds = [feed for ratio in recipe["ratios"] for feed in calibration_feeds(blob, frames, ratio)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")  # two processes making it at once never mix
    with tempfile.TemporaryDirectory(prefix="rvm-live-quant-") as tmp:
        fp32 = Path(tmp) / "lowres_fp32.onnx"
        fp32.write_bytes(blob)
        quantize_static(str(fp32), str(part), Reader(), quant_format=QuantFormat[recipe["format"]],
                        activation_type=QuantType[recipe["activations"]], weight_type=QuantType[recipe["weights"]],
                        per_channel=recipe["per_channel"], reduce_range=recipe["reduce_range"],
                        calibrate_method=CalibrationMethod[recipe["method"]], op_types_to_quantize=recipe["ops"],
                        nodes_to_exclude=keep_float)
    part.replace(dest)
    return dest


def int8_path_for(source: Path, recipe: dict | None = None) -> Path:
    """Where the cache keeps the mixed-precision model of ``source`` made by ``recipe``."""
    from ..assets import cache_dir

    digest = recipe_digest(source, RECIPE if recipe is None else recipe)
    return cache_dir() / f"{source.stem}.lowres-int8ov-{digest}.onnx"


def int8_lowres_ov(source: str | Path, recipe: dict | None = None) -> Path:
    """The cached mixed-precision model of the export at ``source`` (made on first use, about a minute)."""
    source = Path(source)
    recipe = RECIPE if recipe is None else recipe
    dest = int8_path_for(source, recipe)
    if not dest.exists():
        log.info("quantizing %s to int8 with mixed precision (once; cached as %s)", source.name, dest)
        quantize_mixed(source, dest, recipe_frames(range(*recipe["frames"]), tuple(recipe["size"])), recipe)
    return dest


# ----- measuring it ---------------------------------------------------------------------------------------------
# what the tool compares: OpenVinoCoefficients keyword arguments per name
VARIANTS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
            "int8+fp32": {"precision": "int8", "int8_float": "f32"},
            "int8+bf16": {"precision": "int8", "int8_float": "bf16"}}
SPEED_FRAME = (1280, 720)  # the frame the internal sizes are taken from (720p live)


def _runners(source: Path, names: list[str], threads: int) -> dict[str, object]:
    from ..engine.openvino import OpenVinoCoefficients

    return {name: OpenVinoCoefficients(source, threads=threads, **VARIANTS[name]) for name in names}


def alpha_error(source: str | Path, frames: np.ndarray, ratio: float, names: list[str],
                threads: int = 2) -> dict[str, dict[str, float]]:
    """Mean and max |Δα| of each variant against OpenVINO fp32 on ``frames`` (in order, state carried), both
    through the fast full-resolution stage."""
    from ..engine.fullres import FastFullRes
    from ..engine.lowres import downsample

    runners = _runners(Path(source), ["fp32", *[n for n in names if n != "fp32"]], threads)
    finish = FastFullRes()
    alphas: dict[str, list[np.ndarray]] = {}
    for name, runner in runners.items():
        state: list = [None] * 4
        for frame in frames:
            a, b, state = runner(downsample(frame[None], ratio), state)
            alphas.setdefault(name, []).append(finish.matte(frame, a[0], b[0])[1])
    ref = np.stack(alphas.pop("fp32"))
    return {name: {"mean_abs_alpha": round(float(np.abs(np.stack(got) - ref).mean()), 5),
                   "max_abs_alpha": round(float(np.abs(np.stack(got) - ref).max()), 3)}
            for name, got in alphas.items()}


def network_speed(source: str | Path, sizes: list[tuple[int, int]], names: list[str], *, calls: int = 15,
                  block: int = 3, threads: int = 2) -> dict[str, dict[str, float]]:
    """Median wall and process-CPU ms per call of the network half, per internal size (``(w, h)`` of a 1280x720
    frame) and variant: one stream's state carried, on the static model of that shape, variants called in turn
    in blocks of ``block`` calls so that load from elsewhere falls on each alike (CPU time is the work done,
    which load from other processes inflates less than wall time)."""
    from ..engine.lowres import downsample

    runners = _runners(Path(source), names, threads)
    frames = recipe_frames(range(0, 8), SPEED_FRAME)
    report = {}
    for width, height in sizes:
        ratio = width / SPEED_FRAME[0]
        smalls = [downsample(f[None], ratio) for f in frames]
        assert smalls[0].shape[2:] == (height, width), f"{width}x{height} is not a size of 1280x720"
        states = {name: [None] * 4 for name in runners}
        for name, runner in runners.items():  # warm up: the static model of this shape compiled and run
            for small in smalls[:3]:
                _, _, states[name] = runner(small, states[name])
            runner.wait_compiled(120)
            _, _, states[name] = runner(smalls[3], states[name])
        wall: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(-(-calls // block)):
            for name, runner in runners.items():
                time.sleep(0.05)  # the last variant's idle workers go to sleep
                for j in range(block):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    _, _, states[name] = runner(smalls[(r * block + j) % len(smalls)], states[name])
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        report[f"{width}x{height}"] = {name: {"ms": round(float(np.median(wall[name])) * 1e3, 2),
                                              "cpu_ms": round(float(np.median(cpu[name])) * 1e3, 2)}
                                       for name in runners}
    return report


QUALITY_ENGINES = ("openvino", "openvino-bf16", "openvino-int8")
QUALITY_RUNGS = (480, 384, 320, 256)  # internal long sides: RVM's 720p ratio and ladder rungs down to the floor


def ground_truth(frames: dict[str, int], *, engines: tuple[str, ...] = QUALITY_ENGINES,
                 rungs: tuple[int, ...] = QUALITY_RUNGS, threads: int = 2) -> dict:
    """The quality benchmark's rows (:mod:`.quality`, its clips, metrics and timing) for ``engines`` on the
    ``rungs`` only, at each size of ``frames`` (``{"360p": 16, ...}``: frames per clip); its report."""
    import torch

    from . import quality
    from . import quality_data as data

    torch.set_num_threads(threads)
    report = {"machine": quality._machine(), "recipe": quality._recipe(), "engines": list(engines),
              "frames_per_clip": list(frames.values()), "threads": threads, "quick": False, "skipped": [],
              "timing": {"rounds": quality.TIMING_ROUNDS, "frames": quality.TIMING_BLOCK}, "rows": []}
    for size, width, height in quality.parse_sizes(",".join(frames)):
        clips, missing = data.load_clips(width, height, frames[size], None)
        report["skipped"] += [f"{size} clip {name}: {why}" for name, why in missing.items()]
        settings = [quality.Setting(engine, "fast", round(px / max(width, height), 4), "ladder")
                    for px in rungs for engine in engines]
        report["rows"] += quality._run_size(size, width, height, clips, settings, log.info,
                                            (quality.TIMING_ROUNDS, quality.TIMING_BLOCK))
    return report


def _sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(w), int(h)) for w, h in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH[,WxH...], got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m rvm_live.tools.quantize_ov``: make (or reuse) the model; its |Δα| against fp32; its speed."""
    parser = argparse.ArgumentParser(prog="python -m rvm_live.tools.quantize_ov", description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--frames", type=int, default=30, help="evaluation frames (the clip's first ones)")
    parser.add_argument("--ratio", type=float, default=0.6, help="evaluation ratio at 640x360 (0.6: 384x216)")
    parser.add_argument("--speed", type=_sizes, default=None, metavar="WxH,...",
                        help="also time the network half at these internal sizes of a 1280x720 frame")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per variant and size")
    parser.add_argument("--hog", action="store_true", help="time with a busy loop pinned to core 0 as well")
    parser.add_argument("--quality", default=None, metavar="SIZE:N,...",
                        help="only score openvino fp32/bf16/int8 on the ground truth at rungs 480/384/320/256 px, "
                             "e.g. 360p:16,720p:8 (frames per clip), and print the table")
    parser.add_argument("--json", type=Path, default=None, help="--quality: also write the report here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quality:
        return _quality_main(args.quality, args.json, args.threads)
    names = [n.strip() for n in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..assets import fetch
    from ..weights import MOBILENETV3_ONNX_MIRROR

    source = fetch(MOBILENETV3_ONNX_MIRROR)
    report = {"model": str(int8_lowres_ov(source)), "recipe": RECIPE}
    start = RECIPE["frames"][0]
    frames = recipe_frames(range(0, min(args.frames, start)))  # never the calibration frames
    report["alpha_vs_fp32"] = alpha_error(source, frames, args.ratio, names, args.threads)
    if args.speed:
        report["ms_idle"] = network_speed(source, args.speed, names, calls=args.calls, threads=args.threads)
        if args.hog:
            from .livebench import CpuHog

            with CpuHog(0):
                report["ms_one_core_busy"] = network_speed(source, args.speed, names, calls=args.calls,
                                                           threads=args.threads)
    print(json.dumps(report))
    return 0


def _quality_main(spec: str, out: Path | None, threads: int) -> int:
    from .quality_report import format_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        frames = {size: int(n) for size, n in (item.split(":") for item in spec.split(","))}
        report = ground_truth(frames, threads=threads)
    except ValueError as exc:
        sys.stderr.write(f"quantize_ov --quality: error: {exc}\n")
        return 2
    print(format_table(report))
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
