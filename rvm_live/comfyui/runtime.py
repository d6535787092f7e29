"""What the node takes from ComfyUI: its device, its model management and a ``models/rvm`` folder.

The network is wrapped in a ``comfy.model_patcher.ModelPatcher`` and loaded with
``comfy.model_management.load_models_gpu``, like ComfyUI's own models: it stays loaded between runs while
ComfyUI keeps it, and "Unload models" / ``POST /free`` detaches it, which drops it from our cache too.
ComfyUI is imported inside the functions, so this module imports outside ComfyUI.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..assets import cache_dir
from ..errors import WeightsError
from ..model.network import MattingNetwork
from ..weights import WeightsNotFound, candidate_assets, file_backbone, find_weights, load_model

log = logging.getLogger(__name__)

FOLDER = "rvm"  # ComfyUI/models/rvm, registered with folder_paths
WEIGHT_SUFFIXES = (".pth", ".pt", ".torchscript", ".onnx")
AUTO = "auto"
# device types RVM's network runs on; ComfyUI may also hand out DirectML, NPU or MLU devices
RVM_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

# (backbone, weights path, dtype, device) -> the ModelPatcher ComfyUI manages; dropped on detach (unload)
_patchers: dict[tuple[str, str, torch.dtype, torch.device], object] = {}
# unloaded patchers, their weights already released, kept until our next load: ComfyUI holds only weak
# references and, if a model dies while it is unloading it, a finalizer edits the list it is walking
_retired: list[object] = []


def register_folder() -> list[str]:
    """Register ``models/rvm`` with ComfyUI's ``folder_paths`` (idempotent); returns its folders."""
    import folder_paths

    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    return folder_paths.get_folder_paths(FOLDER)


def weight_choices() -> list[str]:
    """The ``weights`` input's options: ``auto``, then every weights file under ``models/rvm``."""
    import folder_paths

    register_folder()
    names = folder_paths.get_filename_list(FOLDER)
    return [AUTO] + [n for n in names if n.lower().endswith(WEIGHT_SUFFIXES)]


def resolve_weights(backbone: str, choice: str) -> Path:
    """The weights file to load: the chosen one, else the first official file name found in
    ``models/rvm`` or rvm-live's cache, else what rvm-live can fetch; a missing file is a one-line error
    naming the file and both places to put it."""
    import folder_paths

    folders = register_folder()
    if choice != AUTO:
        path = folder_paths.get_full_path(FOLDER, choice)
        if path is None:
            raise WeightsError(f"weights {choice!r} is not in {' or '.join(folders)}")
        return Path(path)
    places = [Path(f) for f in folders] + [cache_dir()]
    for asset in candidate_assets(backbone):
        for place in places:
            if (place / asset.filename).is_file():
                return place / asset.filename
    try:
        return find_weights(backbone)
    except WeightsNotFound as exc:
        for attempt in exc.tried:  # the console has the details; the node shows the fix
            log.warning("RVM %s weights: tried %s", backbone, attempt)
        wanted = candidate_assets(backbone)[0]
        raise WeightsError(
            f"no {backbone} weights: put {wanted.filename} in {folders[0]} or {cache_dir()} (from {wanted.url}), "
            "or pick a file in the node's 'weights' input (the console lists what was tried)") from None


def backbone_of(path: Path, backbone: str) -> tuple[str, str | None]:
    """The backbone to run the weights file ``path`` with, and a note for the node when it is not ``backbone``
    (a file picked for the other backbone: it can only run with the one it holds)."""
    stat = path.stat()
    found = _file_backbone(str(path), stat.st_mtime_ns, stat.st_size)
    if found is None or found == backbone:
        return backbone, None
    return found, f"{path.name} holds {found} weights: running backbone {found} (set backbone to {found})"


@functools.lru_cache(maxsize=16)
def _file_backbone(path: str, _mtime_ns: int, _size: int) -> str | None:
    return file_backbone(path)  # reads the file: once per version of it


@dataclass(frozen=True)
class Placement:
    """Where and how the node runs, and what the user should be told about it."""

    device: torch.device
    dtype: torch.dtype
    notes: tuple[str, ...] = ()


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    if device.type == "xpu":
        return hasattr(torch, "xpu") and torch.xpu.is_available()
    return device.type == "cpu"


def place(fp16: bool) -> Placement:
    """ComfyUI's device (``get_torch_device()``), or the CPU where RVM can't run on it; fp16 on CUDA only."""
    import comfy.model_management as mm

    device, notes = mm.get_torch_device(), []
    if device.type not in RVM_DEVICE_TYPES or not _available(device):
        notes.append(f"RVM can't run on ComfyUI's device {device} (it runs on {', '.join(RVM_DEVICE_TYPES)}); "
                     "running on the CPU")
        device = torch.device("cpu")
    return _with_dtype(device, fp16, notes)


def _with_dtype(device: torch.device, fp16: bool, notes: list[str]) -> Placement:
    if fp16 and device.type != "cuda":
        notes.append(f"fp16 is only used on CUDA: running in fp32 on {device.type}")
    dtype = torch.float16 if fp16 and device.type == "cuda" else torch.float32
    return Placement(device, dtype, tuple(notes))


def load(backbone: str, weights: Path, placement: Placement, *, notes: tuple[str, ...] = (),
         node_id: str | None = None) -> MattingNetwork:
    """The network on ``placement``'s device, loaded through ComfyUI's model management and kept (cached)
    until ComfyUI unloads it. ``notes`` (and the placement's) are shown on the node when it loads, not on
    every run."""
    import comfy.model_management as mm

    fresh = _key(backbone, weights, placement) not in _patchers
    patcher = _patcher(backbone, weights, placement)
    if fresh:
        for note in (*notes, *placement.notes):
            tell(node_id, note)
    # full load: our modules have no ComfyUI weight casting, so a partly loaded network could not run
    mm.load_models_gpu([patcher], force_full_load=True)
    return patcher.model


def _key(backbone: str, weights: Path, placement: Placement) -> tuple[str, str, torch.dtype, torch.device]:
    return backbone, str(weights), placement.dtype, placement.device


def _patcher(backbone: str, weights: Path, placement: Placement) -> object:
    import comfy.model_management as mm
    from comfy.model_patcher import ModelPatcher
    from comfy.patcher_extension import CallbacksMP

    _retired.clear()
    key = _key(backbone, weights, placement)
    patcher = _patchers.get(key)
    if patcher is not None:
        return patcher
    log.info("loading RVM %s from %s for %s (%s)", backbone, weights, placement.device, placement.dtype)
    network = load_model(backbone, weights=weights).to(dtype=placement.dtype, memory_format=torch.channels_last)
    offload = mm.unet_offload_device() if placement.device.type != "cpu" else placement.device
    patcher = ModelPatcher(network, load_device=placement.device, offload_device=offload)

    def forget(detached: object, unpatch_all: bool = True) -> None:
        # unpatch_all: ComfyUI unloaded it ("Unload models", POST /free, or to make room), so let it go.
        # load_models_gpu also detaches a model it is about to load again, with unpatch_all=False: keep it.
        if unpatch_all and _patchers.get(key) is detached:
            detached.model.to("meta")  # releases the weights' memory now
            _retired.append(_patchers.pop(key))
            log.info("RVM %s unloaded by ComfyUI", backbone)

    patcher.add_callback(CallbacksMP.ON_DETACH, forget)
    _patchers[key] = patcher
    return patcher


def tell(node_id: str | None, text: str) -> None:
    """Show ``text`` on the node in ComfyUI's UI (and log it), where the server supports node text."""
    log.warning("%s", text)
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server
        return
    send = getattr(PromptServer.instance, "send_progress_text", None)
    if send is not None:  # ComfyUI >= 0.3.40
        send(text, node_id)
