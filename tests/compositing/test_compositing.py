"""Backgrounds and the composite: pixels, alpha, cover-fit, video looping, blur, errors."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from helpers import solid_frames, write_frames

from rvm_live.compositing.backgrounds import (
    BlurBackground,
    ImageBackground,
    TransparentBackground,
    VideoBackground,
    check_background,
    composite,
    parse_background,
)
from rvm_live.compositing.colors import parse_color
from rvm_live.errors import MediaError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(rgb, h=8, w=8, dtype=torch.float32) -> torch.Tensor:
    """A [1,3,H,W] frame of one colour in 0..1."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255).view(1, 3, 1, 1).expand(1, 3, h, w).to(dtype)


def write_image(path, rgb: np.ndarray) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def bands(colors, size: int, *, vertical: bool) -> np.ndarray:
    """Equal colour bands side by side (``vertical``) or stacked, each ``size`` x ``size``."""
    tiles = [np.full((size, size, 3), c, np.uint8) for c in colors]
    return np.concatenate(tiles, axis=1 if vertical else 0)


def close_to(pixel, rgb, tol=0) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int)[:3] - np.asarray(rgb)) <= tol))


# --- colours -------------------------------------------------------------------------------------

def test_parse_color_names_and_hex():
    assert parse_color("green") == (0, 255, 0)
    assert parse_color("lime") == (0, 255, 0)
    assert parse_color("LIME") == (0, 255, 0)
    assert parse_color("#abc") == (0xAA, 0xBB, 0xCC)
    assert parse_color("#A0b1C2") == (0xA0, 0xB1, 0xC2)


@pytest.mark.parametrize("bad", ["nope", "#12", "#abcd", "rgb(1,2,3)", "", "12"])
def test_parse_color_rejects_with_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        parse_color(bad)


# --- composite -----------------------------------------------------------------------------------

def alpha_columns(h=4, w=3, dtype=torch.float32) -> torch.Tensor:
    """Alpha 0, 0.5, 1 in columns 0, 1, 2."""
    return torch.tensor([0.0, 0.5, 1.0], dtype=dtype).view(1, 1, 1, w).expand(1, 1, h, w).contiguous()


def test_colour_background_exact_at_0_and_1_and_blend_at_half():
    fgr, pha = solid((200, 100, 50), 4, 3), alpha_columns()
    bg = parse_background("#102030")
    image, alpha = composite(fgr, pha, bg, fgr)
    assert image.dtype == torch.uint8 and image.shape == (4, 3, 3)
    px = image.numpy()
    assert close_to(px[0, 0], (0x10, 0x20, 0x30))  # alpha 0: background exactly
    assert close_to(px[0, 2], (200, 100, 50))  # alpha 1: foreground exactly
    assert close_to(px[0, 1], (108, 66, 49))  # (200+16)/2, (100+32)/2, (50+48)/2
    assert alpha.shape == (4, 3) and alpha.dtype == torch.uint8
    assert alpha[0].tolist() == [0, 128, 255]


def test_composite_rounds_rather_than_truncates():
    fgr = torch.full((1, 3, 2, 2), 254.6 / 255)
    image, _ = composite(fgr, torch.ones(1, 1, 2, 2), parse_background("black"), fgr)
    assert int(image.max()) == 255 and int(image.min()) == 255


def test_named_green_is_a_green_screens_green():
    fgr = solid((255, 255, 255), 2, 2)
    image, _ = composite(fgr, torch.zeros(1, 1, 2, 2), parse_background("green"), fgr)
    assert close_to(image[0, 0].numpy(), (0, 255, 0))


def test_threshold_gives_a_hard_mask():
    h, w = 2, 11
    fgr = solid((255, 255, 255), h, w)
    pha = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 1, h, w)
    image, alpha = composite(fgr, pha, parse_background("black"), fgr, threshold=0.5)
    assert set(alpha.unique().tolist()) == {0, 255}
    assert alpha[0].tolist() == [255 if v > 0.5 else 0 for v in torch.linspace(0, 1, w).tolist()]
    assert torch.equal(image[..., 0], alpha)  # white over black: every pixel fully one or the other


def test_accepts_unbatched_inputs_and_fp16_close_to_fp32():
    fgr, pha = solid((200, 100, 50), 4, 3), alpha_columns()
    ref, ref_alpha = composite(fgr, pha, parse_background("#102030"), fgr)
    bg16 = parse_background("#102030", dtype=torch.float16)
    half, half_alpha = composite(fgr[0].half(), pha[0].half(), bg16, fgr.half())
    assert half.dtype == torch.uint8 and half.shape == ref.shape
    assert (half.int() - ref.int()).abs().max() <= 1
    assert torch.equal(half_alpha, ref_alpha)


def test_transparent_gives_rgba_with_alpha():
    fgr, pha = solid((10, 20, 30), 4, 3), alpha_columns()
    bg = parse_background("transparent")
    assert bg.transparent and isinstance(bg, TransparentBackground)
    image, alpha = composite(fgr, pha, bg, fgr)
    assert image.shape == (4, 3, 4)
    assert image[..., 3].tolist() == alpha.tolist() == [[0, 128, 255]] * 4
    assert close_to(image[0, 0].numpy(), (10, 20, 30))  # RGB stays the foreground even where alpha is 0


def test_composite_rejects_bad_shapes():
    red, src = parse_background("red"), torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="fgr"):
        composite(torch.zeros(1, 4, 2, 2), torch.zeros(1, 1, 2, 2), red, src)
    with pytest.raises(ValueError, match="differ"):
        composite(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 3, 2), red, src)
    with pytest.raises(TypeError, match="uint8"):
        composite(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, 1, 2, 2), red, src)


# --- image ---------------------------------------------------------------------------------------

def bg_pixels(bg, h, w) -> np.ndarray:
    out = bg.for_frame(torch.zeros(1, 3, h, w))
    assert out.shape == (1, 3, h, w)
    return (out[0].permute(1, 2, 0) * 255).round().byte().numpy()


def test_image_same_size_keeps_orientation_and_rgb_order(tmp_path):
    path = write_image(tmp_path / "bands.png", bands([RED, GREEN, BLUE], 10, vertical=True))
    px = bg_pixels(parse_background(path), 10, 30)
    assert close_to(px[5, 0], RED) and close_to(px[5, 15], GREEN) and close_to(px[5, 29], BLUE)


def test_image_cover_fit_crops_the_centre(tmp_path):
    wide = write_image(tmp_path / "wide.png", bands([RED, GREEN, BLUE], 20, vertical=True))  # 60 x 20
    bg = parse_background(wide)
    assert isinstance(bg, ImageBackground)
    # a square frame sees only the middle band
    assert all(close_to(p, GREEN, 2) for p in bg_pixels(bg, 20, 20).reshape(-1, 3))
    # a wider-than-source frame is scaled up to the width and keeps all three bands left to right
    px = bg_pixels(bg, 10, 90)
    assert close_to(px[5, 0], RED, 2) and close_to(px[5, 45], GREEN, 2) and close_to(px[5, 89], BLUE, 2)
    tall = write_image(tmp_path / "tall.png", bands([RED, GREEN, BLUE], 20, vertical=False))  # 20 x 60
    px = bg_pixels(parse_background(tall), 30, 40)  # scaled x2 to 40 x 120, rows 45..74 kept: all green
    assert all(close_to(p, GREEN, 2) for p in px.reshape(-1, 3))
    px = bg_pixels(parse_background(tall), 60, 20)
    assert close_to(px[0, 10], RED, 2) and close_to(px[59, 10], BLUE, 2)


def test_image_is_fitted_once_per_size(tmp_path):
    bg = parse_background(write_image(tmp_path / "a.png", bands([RED, BLUE], 8, vertical=True)))
    first = bg.for_frame(torch.zeros(1, 3, 8, 8))
    assert bg.for_frame(torch.zeros(1, 3, 8, 8)) is first
    assert bg.for_frame(torch.zeros(1, 3, 4, 4)).shape == (1, 3, 4, 4)


def test_existing_file_wins_over_colour_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "red.png", bands([BLUE], 4, vertical=True))
    os.rename("red.png", "red")
    bg = parse_background("red")
    assert isinstance(bg, ImageBackground)
    assert close_to(bg_pixels(bg, 4, 4)[0, 0], BLUE)


# --- video ---------------------------------------------------------------------------------------

def write_clip(path, colors) -> str:
    return write_frames(path, solid_frames(colors))


def test_video_background_loops_through_its_frames(tmp_path):
    path = write_clip(tmp_path / "rgb.mp4", [RED, GREEN, BLUE])
    with parse_background(path) as bg:
        assert isinstance(bg, VideoBackground)
        seen = [bg_pixels(bg, 12, 20)[6, 10] for _ in range(7)]
    expected = [RED, GREEN, BLUE, RED, GREEN, BLUE, RED]
    assert all(close_to(p, e, 16) for p, e in zip(seen, expected, strict=True)), seen


def test_video_background_close_is_idempotent_and_stops_the_thread(tmp_path):
    bg = parse_background(write_clip(tmp_path / "c.mp4", [RED]))
    bg.for_frame(torch.zeros(1, 3, 8, 8))
    bg.close()
    bg.close()
    assert not bg._thread.is_alive()


def test_corrupt_video_names_the_path(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="broken.mp4"):
        parse_background(str(bad))


# --- blur ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_blur_smooths_an_edge_and_keeps_flat_regions(dtype):
    src = torch.zeros(1, 3, 64, 64, dtype=dtype)
    src[..., 32:] = 1
    bg = parse_background("blur:8")
    assert isinstance(bg, BlurBackground)
    out = bg.for_frame(src).float()
    assert out.shape == (1, 3, 64, 64)
    assert 0.1 < float(out[0, 0, 10, 31]) < 0.9 and 0.1 < float(out[0, 0, 10, 32]) < 0.9
    assert float(out[0, :, :, :4].max()) < 2e-3 and float(out[0, :, :, -4:].min()) > 1 - 2e-3
    flat = torch.full((1, 3, 40, 50), 0.3, dtype=dtype)
    assert torch.allclose(parse_background("blur").for_frame(flat).float(), flat.float(), atol=2e-3)


def test_blur_composite_uses_the_blurred_source():
    src = torch.zeros(1, 3, 32, 32)
    src[..., 16:] = 1
    image, _ = composite(src, torch.zeros(1, 1, 32, 32), parse_background("blur:6"), src)
    assert 20 < int(image[5, 15, 0]) < 235  # the sharp edge is gone where alpha is 0


@pytest.mark.parametrize("radius", [6, 16, 40])  # shrink factors 1, 4 and 10, each dividing 1280x720
def test_the_host_blur_is_the_device_blur_in_uint8(carphone_frames, radius):
    """The CPU's fast stage blurs in OpenCV on uint8; on a real frame it matches the torch blur to a level of 255
    where the shrink factor divides the frame size, and it really blurs (the frame itself is far off)."""
    frame = cv2.resize(carphone_frames[30], (1280, 720), interpolation=cv2.INTER_LINEAR)
    bg = BlurBackground(radius)
    device = bg.for_frame(torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0))[0]
    expected = device.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().astype(int)
    host = bg.picture(frame)
    assert host.shape == frame.shape and host.dtype == np.uint8
    diff = np.abs(host.astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.25
    assert np.abs(host.astype(int) - frame).mean() > 0.5  # blurred, not the frame passed through


def test_the_fast_stage_blurs_on_the_host(monkeypatch, carphone_frames):
    """FastFullRes renders a blur background without the torch path (its full-size float copies cost a 720p
    frame tens of ms): a blur that went through ``for_frame`` fails here."""
    from rvm_live.engine.fullres import FastFullRes

    def refuse(self, src):
        raise AssertionError("the CPU fast stage took the device blur")

    monkeypatch.setattr(BlurBackground, "for_frame", refuse)
    frames = np.ascontiguousarray(carphone_frames[:1])
    h, w = frames.shape[1:3]
    a = np.zeros((1, 4, h // 4, w // 4), np.float32)  # alpha 0 everywhere: the picture is the background
    out = FastFullRes()(frames, (a, a), parse_background("blur:8"))
    np.testing.assert_array_equal(out.image[0], BlurBackground(8).picture(frames[0]))


# --- specs and errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nonsense", "blur:", "blur:x", "blur:0", "blur:9999", "#12345", ""])
def test_bad_spec_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        parse_background(bad)


@pytest.mark.parametrize("name", ["missing.png", "missing.mp4", "sub/dir/missing"])
def test_missing_file_is_a_media_error_naming_the_path(tmp_path, name):
    path = str(tmp_path / name)
    for fn in (parse_background, check_background):
        with pytest.raises(MediaError, match=name) as info:
            fn(path)
        assert isinstance(info.value, OSError)


def test_unreadable_image_and_directory_name_the_path(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(MediaError, match="junk.png"):
        parse_background(str(junk))
    with pytest.raises(MediaError, match="not a regular file"):
        parse_background(str(tmp_path))


def test_check_background_kinds(tmp_path):
    img = write_image(tmp_path / "x.jpg", bands([RED], 4, vertical=True))
    assert check_background("lime") == "color"
    assert check_background(" #fff ") == "color"
    assert check_background("blur:4") == "blur"
    assert check_background("transparent") == "transparent"
    assert check_background(img) == "image"
    assert check_background(write_clip(tmp_path / "v.mp4", [RED])) == "video"
