"""Devices, dtypes, backends and the shared model cache: what an :class:`~rvm_live.engine.core.Engine` is
built from."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from ..model.network import MattingNetwork
from ..weights import load_model


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise the named device (validated)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(fp16: bool | None, device: torch.device) -> torch.dtype:
    """fp16 applies on CUDA; asking for it elsewhere falls back to fp32 with one warning."""
    if fp16 is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if fp16 and device.type != "cuda":
        warnings.warn(f"fp16 is only used on CUDA; running in fp32 on {device}", RuntimeWarning, stacklevel=3)
        return torch.float32
    return torch.float16 if fp16 else torch.float32


def pick_engine(engine: str, *, backbone: str, device: torch.device, weights: str | Path | None = None,
                live: bool = True) -> str:
    """Resolve ``"auto"`` by measurement (BENCHMARKS.md, "Which engine auto picks", "A faster CPU network" and
    "File jobs on OpenVINO"). MobileNetV3 on the CPU (the official export or an .onnx file) runs OpenVINO:
    live sources in bf16 where the CPU has native bf16 (about 2x onnxruntime at the same matting quality on the
    benchmark), else onnxruntime; file jobs in fp32 with the fast full-resolution stage (1.3-1.7x torch's exact
    path a frame, the same fp32 result to 1e-4), else torch. CUDA and ResNet50 run torch."""
    if engine != "auto":
        return engine
    if device.type != "cpu" or backbone != "mobilenetv3":
        return "torch"
    if weights is not None and Path(weights).suffix != ".onnx":
        return "torch"
    from .openvino import available, supports_bf16

    if not live:
        return "openvino" if available() else "torch"
    if available() and supports_bf16():
        return "openvino-bf16"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


@functools.lru_cache(maxsize=4)
def _cached_model(backbone: str, weights: str | None, device: torch.device, dtype: torch.dtype,
                  offline: bool | None) -> MattingNetwork:
    return load_model(backbone, weights=weights, offline=offline).to(device=device, dtype=dtype)


def get_model(backbone: str, *, weights: str | Path | None = None, device: torch.device,
              dtype: torch.dtype, offline: bool | None = None) -> MattingNetwork:
    """A ready (folded, eval, on ``device`` in ``dtype``) model, shared between callers."""
    return _cached_model(backbone, str(weights) if weights is not None else None, device, dtype, offline)
