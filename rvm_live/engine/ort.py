"""The onnxruntime runtime for ``Engine(runtime="onnxruntime")`` (CPU).

On the 2-core CPUs measured in BENCHMARKS.md, onnxruntime's MLAS kernels run RVM's MobileNetV3 faster than
PyTorch's oneDNN path, so CPU users can opt into it behind the same ``Engine`` interface. It runs the
official ONNX export (or another export with the same inputs: ``src, r1i..r4i, downsample_ratio``), which
always applies the guided-filter refiner, even at ratio 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import WeightsError, one_line


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_session(path: str | Path | bytes, threads: int):
    """An onnxruntime CPU session using ``threads`` intra-op threads (all graph optimisations on); ``path``
    may also be a serialized model.

    When the pool takes every usable core, its idle threads do not spin: with one core busy elsewhere (a
    video-call app, another process) a spinning pool burns the cores its own descheduled peer needs and
    slows down several-fold; without spinning it slows down in proportion (BENCHMARKS.md, contention)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads >= usable_cores():
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not isinstance(path, bytes) and not Path(path).is_file():  # onnxruntime's own message is a code dump
        raise WeightsError(f"weights file not found: {path}")
    model = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        what = "the serialized model" if isinstance(path, bytes) else str(path)
        raise WeightsError(f"{what}: onnxruntime cannot load it ({one_line(exc)})") from exc


STATE_INPUTS = ("r1i", "r2i", "r3i", "r4i")
FRESH_STATE = np.zeros((1, 1, 1, 1), np.float32)  # the exports' "no state yet": zeros, broadcast by the graph


def state_feed(state: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """r1i..r4i for an RVM export from a stream's r1..r4 (``None``: a fresh stream)."""
    return {name: FRESH_STATE if r is None else r for name, r in zip(STATE_INPUTS, state)}


def run_recurrent(session, feed: dict[str, np.ndarray],
                  state: Sequence[np.ndarray | None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One call of an RVM export (the official one, or the low-resolution cut): ``feed`` plus the state in,
    ``(outputs before the state, new r1..r4)`` out. The one place that knows the exports' state names and
    that the four new states come last."""
    *outputs, r1, r2, r3, r4 = session.run(None, {**feed, **state_feed(state)})
    return outputs, [r1, r2, r3, r4]


def official_export(weights: str | Path | None, offline: bool | None) -> Path:
    """The ONNX file to run: ``weights``, or the official MobileNetV3 export (fetched and cached)."""
    try:
        import onnxruntime  # noqa: F401  (fail here with the install hint, not deep in a session)
    except ImportError as exc:
        raise ValueError("the onnxruntime runtime needs the onnxruntime package (pip install onnxruntime)") from exc
    if weights is None:
        from ..assets import fetch
        from ..weights import MOBILENETV3_ONNX_MIRROR

        weights = fetch(MOBILENETV3_ONNX_MIRROR, offline=offline)
    path = Path(weights).expanduser()
    if path.suffix != ".onnx":
        raise ValueError(f"the onnxruntime runtime needs an .onnx export, got {path}")
    return path


class OrtMattingNetwork:
    """The official export, callable like ``MattingNetwork`` for ``[B,3,H,W]`` float32 CPU tensors (B streams,
    one frame each); returns torch tensors. One session, shared by every stream of an engine."""

    backbone_name = "mobilenetv3"

    def __init__(self, weights: str | Path | None = None, *, threads: int | None = None,
                 offline: bool | None = None) -> None:
        path = official_export(weights, offline)
        self.session = cpu_session(path, threads or torch.get_num_threads())  # the budget torch would use

    def __call__(self, src: Tensor, r1: Tensor | None = None, r2: Tensor | None = None, r3: Tensor | None = None,
                 r4: Tensor | None = None, downsample_ratio: float = 1.0,
                 always_refine: bool = False) -> tuple[Tensor, ...]:
        if src.ndim != 4:
            raise ValueError(f"the onnxruntime runtime runs one frame per stream ([B,3,H,W]), got {tuple(src.shape)}")
        feed = {"src": src.detach().to(torch.float32).contiguous().numpy(),
                "downsample_ratio": np.array([downsample_ratio], np.float32)}
        state = [None if r is None else r.contiguous().numpy() for r in (r1, r2, r3, r4)]
        outputs, state = run_recurrent(self.session, feed, state)
        return tuple(torch.from_numpy(a) for a in (*outputs, *state))
