"""The daemon's engine for a Config: one ``Engine`` shared by every stream, with the runtime and the
full-resolution stage the config asks for (``engine``, ``fullres``; ``auto`` resolved here)."""

from __future__ import annotations

import logging

from ..config import Config
from ..errors import ConfigError
from .core import Engine
from .loading import pick_engine, resolve_device

log = logging.getLogger(__name__)


def fullres_mode(config: Config, *, live: bool) -> str:
    """``exact`` or ``fast`` for ``config.fullres``: auto is fast on the CPU when every stream is live (the fast
    stage matches exact to 1e-4 and doubles the frames there), exact for file jobs (every frame is kept, so
    speed buys nothing a user sees) and on CUDA (where the exact stage is already cheap)."""
    if config.fullres != "auto":
        return config.fullres
    return "fast" if live and resolve_device(config.device).type == "cpu" else "exact"


def build_engine(config: Config, *, live: bool = False) -> Engine:
    """The engine ``config`` asks for (backbone, device, dtype, runtime, full-resolution stage), loaded once for
    all streams; ``live``: whether every stream's source is live (decides ``fullres = "auto"``)."""
    fullres = fullres_mode(config, live=live)
    device = resolve_device("cpu" if fullres == "fast" and config.device == "auto" else config.device)
    if fullres == "fast" and device.type != "cpu":
        raise ConfigError(f"fullres: 'fast' runs on the CPU; use fullres = 'exact' on {device}")
    # --bf16 is the torch engine's precision: with auto it picks torch
    choice = "torch" if config.bf16 and config.engine == "auto" else config.engine
    runtime = pick_engine(choice, backbone=config.backbone, weights=config.weights, device=device, live=live)
    if config.fullres == "auto" and runtime.startswith("openvino"):
        fullres = "fast"  # OpenVINO runs the network to the coefficients: the fast stage (fp32: exact's result)
    if config.bf16 and (runtime != "torch" or device.type != "cpu"):
        raise ConfigError(f"bf16: runs the torch engine on the CPU, not {runtime} on {device} (OpenVINO's bf16 is "
                          "--engine openvino-bf16; on CUDA use --fp16)")
    engine = Engine(config.backbone, weights=config.weights, device=device, fp16=config.fp16, runtime=runtime,
                    fullres=fullres, compile=config.compile, offline=config.offline or None, bf16=config.bf16)
    log.info("inference: %s on %s (%s runtime%s, %s full-resolution stage)", config.backbone, engine.device,
             engine.runtime, ", bf16 low-resolution part" if config.bf16 else "", fullres)
    return engine
