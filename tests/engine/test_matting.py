"""matting() (the ComfyUI-compatible batch API) and Matter (the streaming object)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rvm_live.engine.matter import Matter, matting
from rvm_live.engine.state import auto_downsample_ratio, recommended_ratio

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def clip(carphone_frames):
    """Eleven real frames as ComfyUI IMAGE: [N,H,W,3] float 0..1."""
    return torch.from_numpy(carphone_frames[:11]).float() / 255


def run(clip, **kw):
    kw.setdefault("backbone", "mobilenetv3")
    kw.setdefault("fp16", False)
    return matting(clip, **kw)


def test_output_types_and_ranges(clip, mobilenet):
    image, mask = run(clip, batch_size=4)
    assert image.shape == clip.shape and mask.shape == clip.shape[:3]
    assert image.dtype == mask.dtype == torch.float32 and image.device.type == mask.device.type == "cpu"
    assert 0 <= float(mask.min()) and float(mask.max()) <= 1 and 0 <= float(image.min()) and float(image.max()) <= 1
    assert 0.1 < float(mask.mean()) < 0.9  # the person is found, the background is not


@pytest.mark.slow
def test_result_does_not_depend_on_batch_size(clip):
    ref_image, ref_mask = run(clip, batch_size=1)
    for batch_size in (3, 4, 11, 16):  # 11 frames: 3 and 4 leave a short last chunk
        image, mask = run(clip, batch_size=batch_size)
        torch.testing.assert_close(mask, ref_mask, atol=1e-4, rtol=0)
        torch.testing.assert_close(image, ref_image, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_state_is_carried_not_reset_per_batch(clip):
    _, carried = run(clip, batch_size=4)
    # what the seed did: each chunk starting from an empty state
    fresh = torch.cat([run(clip[i:i + 4], batch_size=4)[1] for i in range(0, 11, 4)])
    assert float((carried[4:] - fresh[4:]).abs().max()) > 1e-3


def test_matches_streaming_matter(clip):
    _, mask = run(clip, batch_size=4, downsample_ratio=0.5)
    matter = Matter("mobilenetv3", downsample_ratio=0.5)
    alphas = [matter.step((f.numpy() * 255).round().astype(np.uint8))[1][0, 0] for f in clip]
    torch.testing.assert_close(torch.stack(alphas), mask, atol=2e-2, rtol=0)  # uint8 quantised input


def test_soft_alpha_composite_uses_bg_color(clip):
    image, mask = run(clip[:3], bg_color="#ff0000")
    fgr_free = image - torch.tensor([1.0, 0, 0]) * (1 - mask[..., None])
    # where alpha is 0 the pixel is exactly the background colour
    bg_pixels = image[mask == 0]
    assert len(bg_pixels) > 0
    torch.testing.assert_close(bg_pixels, torch.tensor([1.0, 0, 0]).expand_as(bg_pixels))
    assert fgr_free.min() >= -1e-6


@pytest.mark.parametrize(("name", "rgb"), [("green", (0, 255, 0)), ("lime", (0, 255, 0)), ("#123456", (18, 52, 86)),
                                           ("white", (255, 255, 255))])
def test_colour_names_as_pil_gives_them(clip, name, rgb):
    image, mask = run(clip[:1], bg_color=name, threshold=0.5)
    expected = torch.tensor(rgb, dtype=torch.float32) / 255
    torch.testing.assert_close(image[0][mask[0] == 0][0], expected)


def test_threshold_gives_hard_mask_and_composites_with_it(clip):
    soft_image, soft = run(clip[:3])
    image, mask = run(clip[:3], threshold=0.0)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(mask, (soft > 0).float())
    green = torch.tensor([0, 1.0, 0])
    assert torch.allclose(image[mask == 0], green.expand_as(image[mask == 0]))
    assert not torch.allclose(image, soft_image)


def test_numpy_input_and_short_clips(clip):
    image, mask = run(clip[:1].numpy(), batch_size=4)
    assert image.shape == (1, 144, 176, 3)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"video_frames": torch.zeros(2, 8, 8)}, ValueError, r"\[N,H,W,3\]"),
    ({"video_frames": torch.zeros(1, 8, 8, 3, dtype=torch.uint8)}, TypeError, "float"),
    ({"video_frames": [[1]]}, TypeError, "video_frames"),
    ({"video_frames": torch.zeros(0, 8, 8, 3)}, ValueError, "empty"),
    ({"backbone": "vgg"}, ValueError, "vgg"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"bg_color": "notacolour"}, ValueError, "notacolour"),
    ({"downsample_ratio": 1.5}, ValueError, "1.5"),
    ({"downsample_ratio": 0}, ValueError, "downsample_ratio"),
    ({"threshold": 1.2}, ValueError, "threshold"),
    ({"device": "tpu:9"}, ValueError, "tpu"),
])
def test_bad_arguments_are_named(clip, kwargs, exc, match):
    args = {"video_frames": clip[:2], "backbone": "mobilenetv3", "fp16": False, **kwargs}
    with pytest.raises(exc, match=match):
        matting(**args)


def test_fp16_on_cpu_falls_back_with_one_warning(clip):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(clip[:5], fp16=True, batch_size=1)
    fp16_warnings = [w for w in caught if "fp16" in str(w.message)]
    assert len(fp16_warnings) == 1


def test_matter_resets_on_new_resolution(carphone_frames):
    matter = Matter("mobilenetv3")
    matter.step(carphone_frames[0])
    assert matter.state[0] is not None
    small = np.ascontiguousarray(carphone_frames[1][:72, :88])
    fgr, pha = matter.step(small)
    assert pha.shape == (1, 1, 72, 88) and matter.size == (72, 88)
    matter.reset()
    assert matter.state == [None] * 4
    with pytest.raises(TypeError, match="float32 != uint8"):
        matter.step(carphone_frames[0].astype(np.float32))


def test_auto_ratio_follows_rvm_table():
    assert recommended_ratio(720, 1280) == pytest.approx(0.375)
    assert recommended_ratio(1080, 1920) == pytest.approx(0.25)
    assert recommended_ratio(2160, 3840) == pytest.approx(0.125)
    assert recommended_ratio(144, 176) == 1.0
    # RVM's own auto_downsample_ratio (what matting() runs at by default): the long side at most 512 px
    assert auto_downsample_ratio(1080, 1920) == pytest.approx(512 / 1920)
    assert auto_downsample_ratio(144, 176) == 1.0


@requires_cuda
@pytest.mark.gpu
def test_fp16_on_cuda_matches_fp32(clip):
    _, mask32 = run(clip, fp16=False, device="cuda")
    _, mask16 = run(clip, fp16=True, device="cuda")
    assert float((mask32 - mask16).abs().mean()) < 5e-3
    assert float((mask32 - mask16).abs().max()) < 0.1


def test_auto_engine_picks_the_measured_fastest_only_where_it_can_run(monkeypatch):
    from rvm_live.engine import openvino
    from rvm_live.engine.loading import pick_engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    live_cpu = "openvino-bf16" if openvino.available() and openvino.supports_bf16() else "onnxruntime"
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu) == live_cpu  # base dependencies, both
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu, weights="w.onnx") == live_cpu
    monkeypatch.setattr(openvino, "supports_bf16", lambda: False)  # a CPU without bf16: onnxruntime
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu) == "onnxruntime"
    # file jobs: OpenVINO fp32 with the fast stage measured 1.3-1.7x torch's exact path (BENCHMARKS.md); without
    # OpenVINO, torch (faster than onnxruntime's exact path); a .pth file or ResNet50 is torch's alone
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu, live=False) == "openvino"
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu, live=False, weights="w.pth") == "torch"
    assert pick_engine("auto", backbone="mobilenetv3", device=cuda, live=False) == "torch"
    assert pick_engine("onnxruntime", backbone="mobilenetv3", device=cpu, live=False) == "onnxruntime"
    monkeypatch.setattr(openvino, "available", lambda: False)
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu, live=False) == "torch"
    assert pick_engine("auto", backbone="mobilenetv3", device=cpu, weights="w.pth") == "torch"
    assert pick_engine("auto", backbone="resnet50", device=cpu) == "torch"
    assert pick_engine("auto", backbone="mobilenetv3", device=cuda) == "torch"
    assert pick_engine("torch", backbone="mobilenetv3", device=cpu) == "torch"
