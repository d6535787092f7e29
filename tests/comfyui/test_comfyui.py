"""The ComfyUI node against a stand-in of the ComfyUI modules it touches (tests/comfyui/comfy_standin), with real
weights and the carphone frames: outputs, progress, cancel, device, model management, models/rvm."""

from __future__ import annotations

import copy
import gc
import importlib
import shutil
import sys
import weakref
from pathlib import Path

import pytest
import torch

from rvm_live.comfyui import NODE_CLASS_MAPPINGS, runtime
from rvm_live.engine.matter import matting
from rvm_live.errors import WeightsError

STANDIN = Path(__file__).parent / "comfy_standin"
STANDIN_MODULES = ("comfy", "comfy.utils", "comfy.model_management", "comfy.model_patcher",
                   "comfy.patcher_extension", "folder_paths", "server")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Comfy:
    """The freshly imported stand-in modules, plus what the test hooks record."""

    def __init__(self, models_dir: Path) -> None:
        self.mm = importlib.import_module("comfy.model_management")
        self.utils = importlib.import_module("comfy.utils")
        self.folder_paths = importlib.import_module("folder_paths")
        self.server = importlib.import_module("server").PromptServer.instance
        self.folder_paths.models_dir = str(models_dir)
        self.progress: list[tuple[int, int]] = []
        self.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None:
                                                self.progress.append((value, total)))


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """The stand-in ``comfy``/``folder_paths``/``server`` on sys.path, fresh for each test."""
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in STANDIN_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield Comfy(tmp_path / "models")
    runtime._patchers.clear()
    runtime._retired.clear()
    for name in STANDIN_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def clip(carphone_frames):
    """Six real frames as ComfyUI IMAGE: [N,H,W,3] float 0..1."""
    return torch.from_numpy(carphone_frames[:6]).float() / 255


@pytest.fixture(scope="module")
def reference(clip):
    """``matting()``'s IMAGE and MASK for the first four frames, in one batch."""
    return matting(clip[:4], backbone="mobilenetv3", fp16=False, batch_size=4)


_imported: dict[tuple, torch.nn.Module] = {}


@pytest.fixture(autouse=True)
def loads(monkeypatch):
    """Every network the node loads from disk: a counting wrapper around the real loader, which imports each
    file once per module and hands out copies (importing the ONNX export takes seconds here)."""
    loaded: list[torch.nn.Module] = []
    real = runtime.load_model

    def counting(backbone, *, weights):
        key = (backbone, str(weights))
        if key not in _imported:
            _imported[key] = real(backbone, weights=weights)
        loaded.append(copy.deepcopy(_imported[key]))
        return loaded[-1]

    monkeypatch.setattr(runtime, "load_model", counting)
    return loaded


NODE = NODE_CLASS_MAPPINGS["Robust Video Matting"]


def run(frames, **kw):
    args = {"backbone": "mobilenetv3", "fp16": False, "bg_color": "green", "batch_size": 4, **kw}
    return getattr(NODE(), NODE.FUNCTION)(frames, **args)


def test_inputs_outputs_tooltips(comfy):
    types = NODE.INPUT_TYPES()
    assert list(types["required"]) == ["video_frames", "backbone", "fp16", "bg_color", "batch_size"]  # the seed's
    assert list(types["optional"]) == ["downsample_ratio", "threshold", "weights"]
    assert types["required"]["backbone"][1]["default"] == "resnet50"
    for spec in [*types["required"].values(), *types["optional"].values()]:
        assert len(spec[1]["tooltip"]) > 20
    assert NODE.RETURN_TYPES[:2] == ("IMAGE", "MASK") and NODE.RETURN_NAMES[2] == "FOREGROUND"
    assert len(NODE.OUTPUT_TOOLTIPS) == 3 and "Robust Video Matting" in NODE.DESCRIPTION
    assert types["hidden"] == {"unique_id": "UNIQUE_ID"}


def test_outputs_equal_matting_and_composite(comfy, clip, reference):
    clip = clip[:4]
    image, mask, fgr = run(clip, batch_size=3)  # two batches, the state carried across
    ref_image, ref_mask = reference
    assert image.shape == clip.shape and mask.shape == clip.shape[:3] and fgr.shape == clip.shape
    torch.testing.assert_close(mask, ref_mask, atol=1e-4, rtol=0)
    torch.testing.assert_close(image, ref_image, atol=1e-4, rtol=0)
    green = torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(fgr * mask[..., None] + green * (1 - mask[..., None]), image, atol=1e-5, rtol=0)


def test_optional_ratio_and_threshold(comfy, clip):
    _, soft = run(clip[:3], downsample_ratio=0.5)[:2]
    _, ref = matting(clip[:3], backbone="mobilenetv3", fp16=False, downsample_ratio=0.5)
    torch.testing.assert_close(soft, ref, atol=1e-4, rtol=0)
    _, hard = run(clip[:3], downsample_ratio=0.5, threshold=0.5)[:2]
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hard, (ref > 0.5).float())


def test_progress_per_batch(comfy, clip):
    run(clip, batch_size=4)
    assert comfy.progress == [(4, 6), (6, 6)]


def test_cancel_between_batches(comfy, clip):
    def interrupt_after_second(value, total, preview, node_id=None):
        comfy.progress.append((value, total))
        if len(comfy.progress) == 2:
            comfy.mm.interrupt_current_processing()  # what POST /interrupt does

    comfy.utils.set_progress_bar_global_hook(interrupt_after_second)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run(clip, batch_size=2)
    assert comfy.progress == [(2, 6), (4, 6)]  # no third batch was matted
    assert not comfy.mm.processing_interrupted()  # consumed, as ComfyUI's throw does


def test_cancel_before_start_loads_nothing(comfy, clip, loads):
    comfy.mm.interrupt_current_processing()
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run(clip)
    assert loads == [] and comfy.progress == []


def test_runs_on_comfyuis_device_through_model_management(comfy, clip, loads):
    run(clip[:4], unique_id="7")
    (models, kwargs), = comfy.mm.load_calls
    patcher = models[0]()
    assert patcher is comfy.mm.loaded_models()[0] and patcher.model is loads[0]
    assert patcher.load_device == torch.device("cpu")  # what get_torch_device() answered
    assert kwargs["force_full_load"] and comfy.server.texts == []


def test_device_rvm_cannot_use_falls_back_to_cpu_and_says_so(comfy, clip, reference):
    comfy.mm.torch_device = torch.device("privateuseone", 0)  # what ComfyUI hands out under DirectML
    _, mask, _ = run(clip[:4], unique_id="7")
    (models, _), = comfy.mm.load_calls
    assert models[0]().load_device == torch.device("cpu")
    torch.testing.assert_close(mask, reference[1], atol=1e-4, rtol=0)
    (node_id, text), = comfy.server.texts
    assert node_id == "7" and "privateuseone:0" in text and "running on the CPU" in text


def test_fp16_on_cpu_runs_fp32_and_says_so_on_the_node(comfy, clip, reference, loads, recwarn):
    _, mask, _ = run(clip[:4], fp16=True, unique_id="3")
    assert loads[0].backbone_name == "mobilenetv3" and next(loads[0].parameters()).dtype == torch.float32
    assert comfy.server.texts == [("3", "fp16 is only used on CUDA: running in fp32 on cpu")]
    assert not [w for w in recwarn if "fp16" in str(w.message)]  # said on the node, not as a console warning
    torch.testing.assert_close(mask, reference[1], atol=1e-4, rtol=0)


def test_fp16_note_is_said_once_per_model_load(comfy, clip):
    for _ in range(3):
        run(clip[:2], fp16=True, unique_id="3")
    assert comfy.server.texts == [("3", "fp16 is only used on CUDA: running in fp32 on cpu")]
    comfy.mm.unload_all_models()
    run(clip[:2], fp16=True, unique_id="3")  # loaded again: said again
    assert len(comfy.server.texts) == 2


def test_weights_file_of_the_other_backbone_runs_with_its_own_and_says_so(comfy, clip, reference,
                                                                          official_onnx_path, loads):
    folder = Path(runtime.register_folder()[0])
    folder.mkdir(parents=True)
    shutil.copy(official_onnx_path, folder / "rvm_mobilenetv3_fp32.onnx")
    _, mask, _ = run(clip[:4], backbone="resnet50", weights="rvm_mobilenetv3_fp32.onnx", unique_id="9")
    assert loads[0].backbone_name == "mobilenetv3"
    torch.testing.assert_close(mask, reference[1], atol=1e-4, rtol=0)
    assert comfy.server.texts == [("9", "rvm_mobilenetv3_fp32.onnx holds mobilenetv3 weights: running backbone "
                                        "mobilenetv3 (set backbone to mobilenetv3)")]


def test_unknown_colour_name_suggests_the_nearest(comfy, clip):
    with pytest.raises(ValueError, match=r"'grene': unknown colour name \(did you mean green\?\)"):
        run(clip[:2], bg_color="grene")


def test_model_kept_between_runs_and_released_on_unload(comfy, clip, loads):
    for _ in range(3):
        run(clip[:2])
    assert len(loads) == 1 and len(runtime._patchers) == 1  # kept while ComfyUI keeps it
    network = weakref.ref(loads[0])
    assert comfy.mm.loaded_models()[0].model is loads[0]
    loads.clear()
    comfy.mm.unload_all_models()  # "Unload models" / POST /free; must not break ComfyUI's own bookkeeping
    assert comfy.mm.current_loaded_models == [] and runtime._patchers == {}
    assert all(p.is_meta for p in network().parameters())  # the weights' memory is released at once
    run(clip[:2])
    assert len(loads) == 1  # loaded again on the next run
    gc.collect()
    assert network() is None  # and the emptied network is gone


def test_weights_input_lists_models_rvm(comfy, clip, official_onnx_path, loads):
    folder = Path(comfy.folder_paths.models_dir) / "rvm"
    folder.mkdir(parents=True)
    shutil.copy(official_onnx_path, folder / "my_rvm.onnx")
    (folder / "notes.txt").write_text("not weights")
    assert NODE.INPUT_TYPES()["optional"]["weights"][0] == ["auto", "my_rvm.onnx"]
    run(clip[:2], weights="my_rvm.onnx")
    patcher, = comfy.mm.loaded_models()
    assert runtime._patchers == {("mobilenetv3", str(folder / "my_rvm.onnx"), torch.float32,
                                  torch.device("cpu")): patcher}


def test_auto_prefers_official_file_in_models_rvm(comfy, official_onnx_path):
    folder = Path(runtime.register_folder()[0])
    assert folder == Path(comfy.folder_paths.models_dir) / "rvm"
    folder.mkdir(parents=True)
    shutil.copy(official_onnx_path, folder / official_onnx_path.name)
    assert runtime.resolve_weights("mobilenetv3", "auto") == folder / official_onnx_path.name


def test_missing_weights_name_the_file_and_both_places(comfy, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("RVM_LIVE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("RVM_LIVE_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        run(clip[:2], backbone="resnet50")
    message = str(info.value)
    folder = Path(comfy.folder_paths.models_dir) / "rvm"
    # the fix first and short; the URLs tried go to the console
    assert message.startswith(f"no resnet50 weights: put rvm_resnet50.pth in {folder} or {tmp_path / 'empty-cache'}")
    assert "\n" not in message and len(message) < 400, message
    with pytest.raises(WeightsError, match="'gone.pth' is not in"):
        run(clip[:2], weights="gone.pth")


@requires_cuda
@pytest.mark.gpu
def test_cuda_fp16_and_unload_frees_vram(comfy, clip):
    comfy.mm.torch_device = torch.device("cuda", 0)
    _, mask, _ = run(clip, fp16=True)
    patcher, = comfy.mm.loaded_models()
    assert next(patcher.model.parameters()).dtype == torch.float16 and comfy.server.texts == []
    _, ref = matting(clip, backbone="mobilenetv3", fp16=False, device="cpu")
    assert float((mask - ref).abs().mean()) < 5e-3
    held = torch.cuda.memory_allocated()
    del patcher
    comfy.mm.unload_all_models()
    gc.collect()
    assert torch.cuda.memory_allocated() < held
