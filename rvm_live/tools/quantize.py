"""Optional int8 on the CPU: static quantization of the low-resolution network (the official export cut by
:mod:`rvm_live.engine.lowres`), calibrated on real frames of the demo clip with the recurrent state carried.

The recipe is pinned (``RECIPE``); the quantized model is generated on demand into the cache under a name
that carries the recipe's digest, so a changed recipe never reuses an old file. Fidelity against fp32 and
speed are in BENCHMARKS.md: it would be an engine choice only if the mean |Δα| against fp32 were ≤ 1e-2,
and on the machine measured it is not (so nothing uses it yet). ``python -m rvm_live.tools.quantize`` makes the
model and measures both again on another machine (e.g. a CPU with VNNI, where int8 gains more).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..engine.lowres import downsample, lowres_model
from ..engine.ort import STATE_INPUTS, run_recurrent

log = logging.getLogger(__name__)

# Calibration frames are the second half of the demo clip (evaluations use the first frames), every second
# one, at 640x360 and ratio 0.75: a 480x270 internal image, the size of RVM's auto ratio at 720p too.
RECIPE = {"clip": "carphone", "frames": [60, 120, 2], "size": [640, 360], "ratio": 0.75, "format": "QDQ",
          "activations": "QUInt8", "weights": "QInt8", "per_channel": True, "reduce_range": True,
          "method": "MinMax", "quantize": "all", "version": 2}


def recipe_digest(source: Path, recipe: dict | None = None) -> str:
    """A short digest of the recipe (this module's by default) and the source model's bytes."""
    h = hashlib.sha256(json.dumps(RECIPE if recipe is None else recipe, sort_keys=True).encode())
    h.update(source.read_bytes())
    return h.hexdigest()[:12]


def calibration_feeds(model_bytes: bytes, frames: np.ndarray, ratio: float) -> list[dict[str, np.ndarray]]:
    """The cut network's inputs for each frame, with the state the fp32 network carries into it."""
    from ..engine.ort import cpu_session, state_feed

    session = cpu_session(model_bytes, 1)
    small_name = session.get_inputs()[0].name
    state: list[np.ndarray | None] = [None] * 4
    feeds = []
    for frame in frames:
        feed = {small_name: downsample(frame[None], ratio)}
        feeds.append({**feed, **state_feed(state)})
        _, state = run_recurrent(session, feed, state)
    return feeds


def recurrent_part(model) -> list[str]:
    """Names of the nodes from the first one reading a recurrent state on (the decoder, projection and
    refiner): kept in float, since their errors feed back through the state frame after frame."""
    if RECIPE["quantize"] != "encoder":
        return []
    nodes = list(model.graph.node)
    first = next(i for i, n in enumerate(nodes) if set(STATE_INPUTS) & set(n.input))
    return [n.name for n in nodes[first:]]


def quantize_lowres(source: str | Path, dest: str | Path, frames: np.ndarray) -> Path:
    """Write the int8 (QDQ) low-resolution network for ``source`` to ``dest``, calibrated on ``frames``
    (uint8 ``[N,H,W,3]`` already at the recipe's size)."""
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = lowres_model(source)
    if model.opset_import[0].version < 13:  # per-channel DequantizeLinear (its axis) needs opset 13
        model = version_converter.convert_version(model, 13)
    feeds = calibration_feeds(model.SerializeToString(), frames, RECIPE["ratio"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="rvm-live-quant-") as tmp:
        fp32 = Path(tmp) / "lowres_fp32.onnx"
        fp32.write_bytes(model.SerializeToString())
        quantize_static(str(fp32), str(dest.with_suffix(".part")), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=RECIPE["per_channel"], reduce_range=RECIPE["reduce_range"],
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=recurrent_part(model))
    dest.with_suffix(".part").replace(dest)
    return dest


def recipe_frames(indices: range | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The recipe's calibration frames (or the clip's ``indices``), resized to the recipe's size (or ``size``,
    ``(width, height)``)."""
    import cv2

    from ..assets import demo_clip
    from ..io._av import av

    indices = indices if indices is not None else range(*RECIPE["frames"])
    with av.open(str(demo_clip())) as container:
        clip = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    size = tuple(size or RECIPE["size"])
    return np.stack([cv2.resize(clip[i], size, interpolation=cv2.INTER_LINEAR) for i in indices])


def int8_lowres_path(source: str | Path | None = None, *, offline: bool | None = None) -> Path:
    """The cached int8 low-resolution network for the official export (made on first use, ~a minute)."""
    from ..assets import cache_dir, fetch
    from ..weights import MOBILENETV3_ONNX_MIRROR

    source = Path(source) if source is not None else fetch(MOBILENETV3_ONNX_MIRROR, offline=offline)
    dest = cache_dir() / f"{source.stem}.lowres-int8-{recipe_digest(source)}.onnx"
    if not dest.exists():
        log.info("quantizing %s to int8 (once; cached as %s)", source.name, dest)
        quantize_lowres(source, dest, recipe_frames())
    return dest


def _run(session, feeds: list[dict[str, np.ndarray]]) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """(A, b) per frame with the session's own state carried, and the median CPU ms per frame."""
    import time

    state: list[np.ndarray | None] = [None] * 4
    out, cpu = [], []
    small_name = session.get_inputs()[0].name
    for feed in feeds:
        start = time.process_time()
        (a, b), state = run_recurrent(session, {small_name: feed[small_name]}, state)
        cpu.append(time.process_time() - start)
        out.append((a, b))
    return out, float(np.median(cpu[1:] or cpu)) * 1000


def evaluate(int8_path: str | Path, source: str | Path, frames: np.ndarray, ratio: float) -> dict[str, float]:
    """Mean and max |Δα| of the int8 network against fp32 (both through the fast full-resolution stage),
    and the CPU time per frame of each (one thread), over ``frames`` in order."""
    from ..engine.fullres import FastFullRes
    from ..engine.ort import cpu_session

    fp32 = lowres_model(source).SerializeToString()
    feeds = calibration_feeds(fp32, frames, ratio)
    ref, fp32_ms = _run(cpu_session(fp32, 1), feeds)
    got, int8_ms = _run(cpu_session(str(int8_path), 1), feeds)
    fullres, diffs = FastFullRes(), []
    for frame, (a, b), (qa, qb) in zip(frames, ref, got):
        diffs.append(np.abs(fullres.matte(frame, a[0], b[0])[1] - fullres.matte(frame, qa[0], qb[0])[1]))
    return {"mean_abs_alpha": round(float(np.mean(diffs)), 5), "max_abs_alpha": round(float(np.max(diffs)), 4),
            "cpu_ms_fp32": round(fp32_ms, 1), "cpu_ms_int8": round(int8_ms, 1)}


def main(argv: list[str] | None = None) -> int:
    """``python -m rvm_live.tools.quantize``: make (or reuse) the int8 model and measure it against fp32."""
    parser = argparse.ArgumentParser(prog="python -m rvm_live.tools.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="evaluation frames (the clip's first ones)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..assets import fetch
    from ..weights import MOBILENETV3_ONNX_MIRROR

    source = fetch(MOBILENETV3_ONNX_MIRROR)
    path = int8_lowres_path(source)
    start, _, _ = RECIPE["frames"]
    frames = recipe_frames(range(0, min(args.frames, start)))  # never the calibration frames
    print(json.dumps({"model": str(path), "recipe": RECIPE, **evaluate(path, source, frames, RECIPE["ratio"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
