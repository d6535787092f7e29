"""The daemon's configuration: one frozen dataclass whose fields map 1:1 onto TOML preset keys."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKBONES = ("mobilenetv3", "resnet50")
FULLRES_MODES = ("exact", "fast")
ENGINES = ("torch", "onnxruntime")  # what Matter runs; the daemon's config also takes "auto"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Config:
    """Everything a pipeline run needs. Defaults give the embedded demo job."""

    # source
    source: str = "demo"
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = None
    loop: bool = False
    realtime: bool = False
    # inference
    backbone: str = "mobilenetv3"
    weights: str | None = None
    offline: bool = False
    device: str = "auto"
    fp16: bool | None = None  # None: on for CUDA, off elsewhere
    downsample: str | float = "auto"
    engine: str = "auto"  # auto | torch | onnxruntime (CPU, MobileNetV3, the official ONNX export)
    compile: bool = False  # torch.compile the network (slow first start; cached afterwards)
    chunk: int = 0  # frames per network call along time for file jobs; 0: 4 on CUDA (torch engine), else 1
    fullres: str = "exact"  # exact | fast (CPU: refine + composite in one OpenCV pass, see fullres.py)
    # compositing
    bg: str = "green"
    mask_threshold: float | None = None
    mirror: bool = False
    side_by_side: bool = False
    # outputs
    outputs: tuple[str, ...] = ()
    vcam_device: str | None = None
    encoder: str = "auto"  # auto | libx264 | h264_nvenc | ...
    crf: int = 20
    bitrate: int | None = None  # bits/s for stream outputs; None picks from resolution
    queue_size: int = 2
    # run control
    max_frames: int | None = None
    stats_json: str | None = None
    control: str | None = None
    control_token: str | None = None
    no_signal_timeout: float = 1.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.engine not in ("auto", *ENGINES):
            raise ConfigError(f"engine: {self.engine!r} is not one of auto, {', '.join(ENGINES)}")
        if self.fullres not in FULLRES_MODES:
            raise ConfigError(f"fullres: {self.fullres!r} is not one of {', '.join(FULLRES_MODES)}")
        if self.downsample != "auto":
            try:
                r = float(self.downsample)
            except (TypeError, ValueError):
                raise ConfigError(f"downsample: {self.downsample!r} is not 'auto' or a number") from None
            if not 0 < r <= 1:
                raise ConfigError(f"downsample: {r} must satisfy 0 < r <= 1")
            object.__setattr__(self, "downsample", r)
        for name in ("width", "height", "max_frames"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"{name}: {v!r} must be a positive integer")
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ConfigError(f"fps: {self.fps!r} must be a positive number")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or not 0 <= self.chunk <= 16:
            raise ConfigError(f"chunk: {self.chunk!r} must be an integer from 0 (auto) to 16")
        if not isinstance(self.queue_size, int) or not 1 <= self.queue_size <= 8:
            raise ConfigError(f"queue_size: {self.queue_size!r} must be an integer from 1 to 8")
        if self.mask_threshold is not None and not 0 <= float(self.mask_threshold) < 1:
            raise ConfigError(f"mask_threshold: {self.mask_threshold!r} must be in [0, 1)")
        if isinstance(self.outputs, (list, str)):
            outs = (self.outputs,) if isinstance(self.outputs, str) else tuple(self.outputs)
            object.__setattr__(self, "outputs", outs)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


FIELD_NAMES = frozenset(f.name for f in fields(Config))


def config_from_mapping(data: dict[str, Any], *, origin: str = "config", base: Config | None = None) -> Config:
    """Build a Config from a mapping (e.g. parsed TOML). An unknown key is an error naming it."""
    unknown = sorted(set(data) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"{origin}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(FIELD_NAMES))})")
    try:
        return dataclasses.replace(base or Config(), **data)
    except TypeError as exc:  # pragma: no cover - replace() only raises TypeError for bad names
        raise ConfigError(f"{origin}: {exc}") from None


def load_toml(path: str | Path, *, base: Config | None = None) -> Config:
    """Load a TOML preset. ``path`` may be a file or the name of a preset in ``configs/``."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = CONFIG_DIR / f"{path}.toml"
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    return config_from_mapping(data, origin=str(path), base=base)


def preset_names() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
