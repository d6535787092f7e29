"""The daemon's configuration: one frozen dataclass whose fields map 1:1 onto TOML preset keys."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .compositing.colors import color_hint, parse_color
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKBONES = ("mobilenetv3", "resnet50")
QUALITIES = ("auto", "fixed")
FULLRES_MODES = ("auto", "exact", "fast")
# what an Engine runs (the openvino ones: the fast full-resolution stage only); the config also takes "auto"
ENGINES = ("torch", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8")
LOG_LEVELS = ("debug", "info", "warning", "error")
# The presets: inside the installed package (a wheel carries a copy, see rvm_live/_build.py), or the
# top-level configs/ of a source checkout (an editable install), their one source.
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CHECKOUT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    bf16: bool = False  # CPU, torch runtime: the network's low-resolution part in bfloat16 (engine/core.py)
    downsample: str | float = "auto"
    engine: str = "auto"  # auto | torch | onnxruntime | openvino[-bf16|-int8] (CPU: see engine/loading.py)
    compile: bool = False  # torch.compile the network (slow first start; cached afterwards)
    chunk: int = 0  # frames per network call along time for file jobs; 0: 4 on CUDA (torch engine), else 1
    quality: str = "auto"  # auto: live streams adapt the ratio to hold the source's rate (governor.py); fixed
    latency_budget: float = 100.0  # ms: the governor keeps a frame's time in inference under this
    # auto | exact | fast (CPU: refine + composite in one OpenCV pass, see fullres.py); auto: fast for live
    # sources on the CPU (max |Δα| 8e-5 against exact, ~2x the frames), exact for file jobs and on CUDA
    fullres: str = "auto"
    # compositing
    bg: str = "green"
    bg_fallback: str = "green"  # the colour a background video that breaks mid-run falls back to
    bg_max_megapixels: float = 40.0  # larger background images are refused
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
    control_token_file: str | None = None  # the token's first line, read at start (kept out of the command line)
    control_allow_hosts: tuple[str, ...] = ()  # Host names the control API answers beyond loopback and its address
    no_signal_timeout: float = 1.0
    log_level: str = "info"
    # several streams through one engine: a list of tables, each with its own STREAM_KEYS (TOML [[streams]])
    streams: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                checked = _RULES[f.name](value)
            except _Bad as bad:
                raise ConfigError(f"{f.name} = {_show(value)}: expected {bad}") from None
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        if isinstance(self.downsample, float) and self.width and self.height:
            check_internal_size(self.downsample, self.width, self.height)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


MIN_INTERNAL_PX = 32  # the network's coarsest stride: a smaller internal image has nothing left to match
MAX_SIDE = 16384
# a frame every 10 s at the slowest (a time-lapse camera); below that a period overflows timers and encoders
FPS_LIMITS = (0.1, 1000.0)


class _Bad(Exception):
    """A value failed its rule; the message says what was expected."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Rule = Callable[[Any], Any]


def _optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("true or false")
    return v


def _int(lo: int, hi: int) -> Rule:
    def rule(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad(f"an integer from {lo} to {hi}")
        return v
    return rule


def _number(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    what = f"a number {'>' if lo_open else '>='} {lo:g} and {'<' if hi_open else '<='} {hi:g}"

    def rule(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad(what)
        if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise _Bad(what)
        return float(v)
    return rule


def _text(max_len: int = 4096) -> Rule:
    def rule(v: Any) -> str:
        if not isinstance(v, str) or not v.strip() or len(v) > max_len or "\0" in v:
            raise _Bad(f"a non-empty string of at most {max_len} characters")
        return v
    return rule


def _choice(*choices: str) -> Rule:
    def rule(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in choices:
            raise _Bad(f"one of {', '.join(choices)}")
        return v.lower()
    return rule


def _ratio(v: Any) -> str | float:
    if v == "auto":
        return v
    lowest = MIN_INTERNAL_PX / MAX_SIDE  # no frame is larger, so no smaller ratio can ever work
    try:
        return _number(lowest, 1)(v)
    except _Bad:
        raise _Bad(f"'auto' or a number from {lowest:g} to 1") from None


def _colour(v: Any) -> str:
    try:
        parse_color(v)
    except ValueError:
        raise _Bad(f"a colour name or #rrggbb{color_hint(v)}") from None
    return v


def _outputs(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(o, str) and o.strip() for o in v):
        raise _Bad("a list of output specs (strings)")
    return tuple(v)


def _host_names(v: Any) -> tuple[str, ...]:
    names = (v,) if isinstance(v, str) else v
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise _Bad("a list of host names")
    return tuple(n.strip() for n in names)


def _streams(v: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(entry, dict) for entry in v):
        raise _Bad("a list of stream tables ([[streams]] in TOML)")
    return tuple(v)


def _fourcc(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 4:
        raise _Bad("four characters, e.g. MJPG")
    return v


_RULES: dict[str, Rule] = {
    "source": _text(), "width": _optional(_int(1, MAX_SIDE)), "height": _optional(_int(1, MAX_SIDE)),
    "fps": _optional(_number(*FPS_LIMITS)), "fourcc": _optional(_fourcc), "loop": _bool,
    "realtime": _bool, "backbone": _choice(*BACKBONES), "weights": _optional(_text()), "offline": _bool,
    "device": _text(64), "fp16": _optional(_bool), "bf16": _bool, "downsample": _ratio,
    "engine": _choice("auto", *ENGINES), "compile": _bool, "chunk": _int(0, 16), "bg": _text(), "bg_fallback": _colour,
    "bg_max_megapixels": _number(0, 1000, lo_open=True), "mask_threshold": _optional(_number(0, 1, hi_open=True)),
    "mirror": _bool, "side_by_side": _bool, "outputs": _outputs, "vcam_device": _optional(_text()),
    "encoder": _text(64), "crf": _int(0, 63), "bitrate": _optional(_int(1, 10**10)), "queue_size": _int(1, 8),
    "max_frames": _optional(_int(1, 2**62)), "stats_json": _optional(_text()), "control": _optional(_text(300)),
    "control_token": _optional(_text()), "control_token_file": _optional(_text()),
    "control_allow_hosts": _host_names,
    "no_signal_timeout": _number(0, 3600), "log_level": _choice(*LOG_LEVELS),
    "fullres": _choice(*FULLRES_MODES), "quality": _choice(*QUALITIES), "latency_budget": _number(1, 10_000),
    "streams": _streams,
}


def check_internal_size(ratio: float | str, width: int, height: int) -> None:
    """ConfigError when ``downsample`` would shrink a ``width`` x ``height`` frame below 32 px inside the model."""
    if isinstance(ratio, float) and ratio * min(width, height) < MIN_INTERNAL_PX:
        lowest = MIN_INTERNAL_PX / min(width, height)
        raise ConfigError(f"downsample = {ratio:g}: expected at least {lowest:.3g} for {width}x{height} frames "
                          f"(the model needs {MIN_INTERNAL_PX} px or more inside)")


FIELD_NAMES = frozenset(f.name for f in fields(Config))
# what each [[streams]] entry may set; the rest (engine, device, control, ...) is shared by every stream
STREAM_KEYS = frozenset({"id", "source", "width", "height", "fps", "fourcc", "loop", "realtime", "downsample",
                         "quality", "latency_budget",
                         "bg", "mask_threshold", "mirror", "side_by_side", "outputs", "vcam_device", "queue_size",
                         "max_frames", "no_signal_timeout"})


def stream_configs(config: Config) -> list[tuple[str, Config]]:
    """``(stream id, its Config)`` for every stream: the ``streams`` entries over the shared settings, or the
    one stream ``"0"`` that the flat settings describe. A bad entry is a ConfigError naming it."""
    if not config.streams:
        return [("0", config)]
    result: list[tuple[str, Config]] = []
    for i, entry in enumerate(config.streams):
        where = f"streams[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table of stream settings, got {entry!r}")
        unknown = sorted(set(entry) - STREAM_KEYS)
        if unknown:
            raise ConfigError(f"{where}: key {unknown[0]!r} cannot differ per stream "
                              f"(per-stream keys: {', '.join(sorted(STREAM_KEYS))})")
        stream_id = entry.get("id", str(i))
        if not isinstance(stream_id, str) or not stream_id.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}.id: {stream_id!r} must be a name of letters, digits, - and _")
        if stream_id in dict(result):
            raise ConfigError(f"{where}.id: {stream_id!r} is used twice")
        settings = {k: v for k, v in entry.items() if k != "id"}
        try:
            result.append((stream_id, config.replace(streams=(), **settings)))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return result


def config_from_mapping(data: dict[str, Any], *, origin: str = "config", base: Config | None = None) -> Config:
    """Build a Config from a mapping (e.g. parsed TOML). An unknown key is an error naming it."""
    unknown = sorted(set(data) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"{origin}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(FIELD_NAMES))})")
    try:
        return dataclasses.replace(base or Config(), **data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except TypeError as exc:  # pragma: no cover - replace() only raises TypeError for bad names
        raise ConfigError(f"{origin}: {exc}") from None


def load_toml(path: str | Path, *, base: Config | None = None) -> Config:
    """Load a TOML preset. ``path`` may be a file or the name of a preset in ``configs/``."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = preset_dir() / f"{path}.toml"
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        presets = f" (presets: {', '.join(preset_names())})" if not Path(path).suffix else ""
        raise ConfigError(f"config file not found: {path}{presets}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    return config_from_mapping(data, origin=str(path), base=base)


def preset_dir() -> Path:
    """Where the shipped presets are: the installed package's copy, else the source checkout's ``configs/``."""
    if any(PACKAGE_CONFIG_DIR.glob("*.toml")):
        return PACKAGE_CONFIG_DIR
    return CHECKOUT_CONFIG_DIR


def preset_names() -> list[str]:
    """Names of the shipped presets (``--config NAME``)."""
    return sorted(p.stem for p in preset_dir().glob("*.toml"))
