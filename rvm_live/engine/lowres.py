"""The network without its full-resolution part: low-resolution guided-filter coefficients ``A, b``.

RVM's last step (the deep guided filter) fits ``y = A·x + b`` per pixel at the network's internal size and
applies it at the frame's size: ``fgr = A_rgb·x + b_rgb + x`` and ``pha = A_α·mean(x) + b_α`` with ``A, b``
bilinearly upsampled. At 720p that full-resolution part, done by the network engine in float tensors,
costs as much as the network itself on a 2-core CPU. The engines here stop before it and return the
low-resolution ``A, b`` (``[B,4,h,w]`` each); :mod:`rvm_live.engine.fullres` applies them in one cheap pass.

- :class:`OrtCoefficients`: the official ONNX export cut with the ``onnx`` package so that it takes the
  already-downsampled frame and outputs ``A, b`` instead of ``fgr, pha`` (the graph is found by its
  structure, not by node names, and the cut is made in memory at load time; nothing is cached).
- our ``MattingNetwork`` has the same output (:meth:`~rvm_live.model.network.MattingNetwork.coefficients`).
- :func:`downsample`: the uint8 frames to the network's input size, as the export's own bilinear resize.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import WeightsError, one_line
from .ort import cpu_session, run_recurrent

State = list  # r1..r4 (None: a fresh stream)


def internal_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """The network's internal ``(h, w)`` for a frame and ratio (floor, as the export's Resize and torch)."""
    return max(1, math.floor(height * ratio)), max(1, math.floor(width * ratio))


def downsample(frames: np.ndarray, ratio: float) -> np.ndarray:
    """uint8 ``[B,H,W,3]`` (or the same as float32 0..255) → float32 ``[B,3,h,w]`` in 0..1, bilinear with
    half-pixel centres (no antialias), as the official export resizes its input; ``ratio`` 1 converts only."""
    _, height, width, _ = frames.shape
    h, w = internal_size(height, width, ratio)
    out = np.empty((frames.shape[0], 3, h, w), np.float32)
    for i, frame in enumerate(frames):
        small = frame if (h, w) == (height, width) else cv2.resize(frame.astype(np.float32, copy=False), (w, h),
                                                                     interpolation=cv2.INTER_LINEAR)
        out[i] = small.transpose(2, 0, 1)
    out *= np.float32(1 / 255)
    return out


def _producers(graph) -> dict[str, object]:
    return {out: node for node in graph.node for out in node.output}


def find_cut(graph) -> tuple[str, str, str]:
    """``(small_src, A, b)``: tensor names in an RVM export: the resized input, and the low-resolution
    coefficients that the final ``Mul``/``Add`` apply after their ``Resize`` to full size."""
    prod = _producers(graph)
    try:
        split = prod[prod["pha"].input[0]]  # pha = Clip(Split(A↑·x + b↑)[1])
        add = prod[split.input[0]]
        ins = [prod[name] for name in add.input]
        mul = next(n for n in ins if n.op_type == "Mul")
        b_resize = next(n for n in ins if n.op_type == "Resize")
        a_resize = next(prod[name] for name in mul.input if name in prod and prod[name].op_type == "Resize")
        small = next(n.output[0] for n in graph.node if n.op_type == "Resize" and n.input[0] == "src")
    except (KeyError, StopIteration) as exc:
        raise ValueError("not an RVM export with a guided-filter refiner at its end (cannot find A, b)") from exc
    return small, a_resize.input[0], b_resize.input[0]


def lowres_model(path: str | Path):
    """The RVM export at ``path`` cut to ``small_src, r1i..r4i → A, b, r1o..r4o`` (an ``onnx.ModelProto``)."""
    import onnx
    from onnx import TensorProto, helper

    from .ort import STATE_INPUTS

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # onnx raises DecodeError and friends
        raise WeightsError(f"{path}: not a readable ONNX model ({one_line(exc)})") from exc
    graph = model.graph
    small, a_name, b_name = find_cut(graph)
    prod, inits = _producers(graph), {t.name for t in graph.initializer}
    states_in, states_out = list(STATE_INPUTS), [name[:-1] + "o" for name in STATE_INPUTS]
    keep: set[int] = set()
    stack = [a_name, b_name, *states_out]
    while stack:  # every node the new outputs depend on, stopping at the new inputs
        name = stack.pop()
        if name in (small, *states_in) or name in inits or not name:
            continue
        node = prod.get(name)
        if node is None:
            raise ValueError(f"{path}: {name!r} depends on the full-size input; cannot cut the graph")
        if id(node) not in keep:
            keep.add(id(node))
            stack.extend(node.input)
    nodes = [n for n in graph.node if id(n) in keep]
    used = {name for n in nodes for name in n.input}
    by_name = {v.name: v for v in (*graph.input, *graph.output)}
    low = ["batch_size", 4, "small_h", "small_w"]
    inputs = [helper.make_tensor_value_info(small, TensorProto.FLOAT, ["batch_size", 3, "small_h", "small_w"]),
              *(by_name[n] for n in states_in)]
    outputs = [helper.make_tensor_value_info(a_name, TensorProto.FLOAT, low),
               helper.make_tensor_value_info(b_name, TensorProto.FLOAT, low), *(by_name[n] for n in states_out)]
    cut = helper.make_graph(nodes, "rvm_lowres", inputs, outputs, [t for t in graph.initializer if t.name in used])
    out = helper.make_model(cut, opset_imports=model.opset_import)
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


class OrtCoefficients:
    """The official export without its full-resolution part, on onnxruntime's CPU provider: one session for
    every stream of an engine (a batch of streams is one call)."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        model = lowres_model(path)
        self._small = model.graph.input[0].name
        self.session = cpu_session(model.SerializeToString(), threads or torch.get_num_threads())

    def __call__(self, small: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray, State]:
        """``small`` float32 ``[B,3,h,w]`` (0..1) and r1..r4 (``None``: a fresh stream) → ``A, b``
        ``[B,4,h,w]`` and the next r1..r4."""
        (a, b), state = run_recurrent(self.session, {self._small: small}, state)
        return a, b, state
