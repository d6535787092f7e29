"""A background that breaks never stops the pipeline: corrupt and vanishing videos, huge images."""

from __future__ import annotations

import json
import os
import time
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from helpers import corrupt_clip, run_cli, solid_frames, write_clip, write_frames

from rvm_live.compositing.backgrounds import ImageBackground, VideoBackground, parse_background
from rvm_live.compositing.pictures import cover_fit
from rvm_live.errors import MediaError

SRC = torch.zeros(1, 3, 16, 16)


def pixel(bg) -> np.ndarray:
    return (bg.for_frame(SRC)[0, :, 8, 8] * 255).round().int().tolist()


def run_until_fallback(bg, within_s: float = 20) -> list:
    seen = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        seen.append(pixel(bg))
        if bg.failure and seen[-1] == [255, 0, 0]:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"no fallback within {within_s} s: failure={bg.failure!r}, last={seen[-3:]}")


def test_corrupt_video_falls_back_to_last_frame_then_colour(tmp_path, caplog):
    path = corrupt_clip(tmp_path / "corrupt.mp4")
    with VideoBackground(path, device="cpu", dtype=torch.float32, fallback="red", hold_s=0.3) as bg:
        assert bg.failure is None
        seen = run_until_fallback(bg)
    assert "corrupt.mp4" in bg.failure
    held = [p for p in seen if p != [255, 0, 0]]
    assert len(held) > 1 and held[-1] == held[-2]  # the last good frame was held before the colour
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "corrupt.mp4" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.slow
def test_video_deleted_while_playing_falls_back(tmp_path):
    path = write_clip(tmp_path / "gone.mp4", n=3)
    with parse_background(path, fallback="red") as bg:
        pixel(bg)
        os.unlink(path)
        run_until_fallback(bg)  # the open pass ends, the reopen fails: never an exception here
    assert bg.failure.count("gone.mp4") == 1, bg.failure  # not "background video X: background video X: ..."


def test_undecodable_video_is_refused_at_construction(tmp_path):
    bad = tmp_path / "head-only.mp4"
    good = write_clip(tmp_path / "good.mp4")
    bad.write_bytes(open(good, "rb").read()[:1200])  # a header and no usable frame
    with pytest.raises(MediaError, match="head-only.mp4"):
        parse_background(str(bad))


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((3000, 2000, 3), np.uint8))  # 6 MP
    with pytest.raises(MediaError, match=r"big.png: 2000x3000 is over the 5 MP limit"):
        parse_background(str(path), max_megapixels=5)
    assert isinstance(parse_background(str(path), max_megapixels=6), ImageBackground)


@pytest.mark.parametrize(("shape", "what"), [((1, 600000), "600000x1 is too wide"), ((1, 20000), "20000x1 is too wide"),
                                             ((20000, 1), "1x20000 is too tall")])
def test_a_tiny_file_of_an_absurdly_shaped_picture_is_refused_before_decoding(tmp_path, shape, what):
    path = tmp_path / "banner.png"
    cv2.imwrite(str(path), np.zeros((*shape, 3), np.uint8))
    assert path.stat().st_size < 100_000  # passes any file-size or megapixel limit
    with pytest.raises(MediaError, match=rf"image .*banner.png: {what} for a background \(at most 16:1\)"):
        parse_background(str(path))


def test_a_radiance_picture_is_measured_before_it_is_decoded(tmp_path):
    path = tmp_path / "sky.hdr"  # a format PIL cannot read: its header is read instead
    cv2.imwrite(str(path), np.full((1500, 2000, 3), 0.5, np.float32))
    with pytest.raises(MediaError, match=r"sky.hdr: 2000x1500 is over the 2 MP limit"):
        parse_background(str(path), max_megapixels=2)
    assert parse_background(str(path), max_megapixels=4).for_frame(SRC).shape == (1, 3, 16, 16)


def test_a_picture_whose_size_no_header_tells_is_not_decoded(tmp_path):
    path = tmp_path / "odd.png"
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 999999 +Z 3\n" + bytes(64))
    with pytest.raises(MediaError, match="odd.png: cannot tell its size without decoding it"):
        parse_background(str(path))


def test_cover_fit_enlarges_only_into_the_output_whatever_the_shape():
    tracemalloc.start()
    try:
        fitted = cover_fit(np.full((1, 2000, 3), 7, np.uint8), 72, 128)  # a scaled copy would be 144000x72
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fitted.shape == (72, 128, 3) and (fitted == 7).all()
    assert peak < 10 * fitted.nbytes, peak


def test_a_background_video_of_an_absurd_shape_is_refused_before_decoding(tmp_path):
    path = tmp_path / "strip.mp4"
    write_frames(path, solid_frames([0] * 3, (32, 1088)))
    with pytest.raises(MediaError, match=r"^background video .*strip.mp4: 1088x32 is too wide"):
        parse_background(str(path))


def test_image_is_kept_only_at_the_size_that_covers_the_output(tmp_path):
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.full((2400, 3200, 3), 90, np.uint8))
    bg = parse_background(str(path))
    assert bg.for_frame(torch.zeros(1, 3, 120, 160)).shape[-2:] == (120, 160)
    assert bg._image.shape[:2] == (120, 160)


@pytest.mark.slow
def test_a_corrupt_background_video_does_not_stop_a_job(tmp_path, carphone_path, official_onnx_path):
    bg = corrupt_clip(tmp_path / "corrupt.mp4")
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = run_cli("--source", str(carphone_path), "--bg", bg, "--bg-fallback", "red", "-o", str(out),
               "--stats-json", str(stats))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("corrupt.mp4") == 1 and "Traceback" not in proc.stderr
    report = json.loads(stats.read_text())
    assert report["frames_out"] == 120 and "corrupt.mp4" in report["background_error"]


@pytest.mark.slow
def test_an_absurdly_shaped_background_is_one_line_at_start(tmp_path, carphone_path, official_onnx_path):
    banner = tmp_path / "banner.png"
    cv2.imwrite(str(banner), np.zeros((1, 600000, 3), np.uint8))
    proc = run_cli("--source", str(carphone_path), "--bg", str(banner), "-o", "null")
    assert proc.returncode == 1 and "banner.png: 600000x1 is too wide for a background" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
