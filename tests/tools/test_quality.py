"""The matting-quality benchmark: metrics against hand-made cases, the ground truth's compositing identity, the
MediaPipe peer (skipped and present), and a --quick run end to end."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from rvm_live.tools import quality, quality_data, quality_report
from rvm_live.tools import quality_metrics as qm

RNG = np.random.default_rng(7)


# ----- metrics -------------------------------------------------------------------------------------------------
def test_a_constant_offset_gives_mad_the_offset_and_mse_its_square():
    true = RNG.uniform(0.2, 0.8, (40, 60))
    assert qm.mad(true + 0.1, true) == pytest.approx(100.0)  # 0.1 x 1e3
    assert qm.mse(true + 0.1, true) == pytest.approx(10.0)  # 0.01 x 1e3
    assert qm.mad(true - 0.1, true) == pytest.approx(100.0)
    assert qm.mad(true, true) == 0 and qm.mse(true, true) == 0


def test_mad_and_mse_weigh_one_large_error_differently():
    true = np.zeros((10, 10))
    pred = true.copy()
    pred[0, 0] = 1.0  # one pixel of 100 wrong by 1
    assert qm.mad(pred, true) == pytest.approx(10.0) and qm.mse(pred, true) == pytest.approx(10.0)
    pred[0, 0] = 0.5
    assert qm.mad(pred, true) == pytest.approx(5.0) and qm.mse(pred, true) == pytest.approx(2.5)


def test_grad_kernel_is_rvms_nine_taps():
    g, dg = qm.gauss_kernels(1.4)
    assert len(g) == len(dg) == 9
    assert np.allclose(g, g[::-1]) and np.allclose(dg, -dg[::-1])  # symmetric, antisymmetric
    assert np.linalg.norm(np.outer(g, dg)) == pytest.approx(1.0)


def _step(width: int, height: int, at: int) -> np.ndarray:
    image = np.zeros((height, width))
    image[:, at:] = 1.0
    return image


def _hand_profile(width: int, at: int, sigma: float = 1.4) -> list[float]:
    """|d/dx| of a vertical step at column ``at``, by the formula, with a replicated border: the vertical pass
    contributes sum(g), the horizontal one sum_j dg[j]·step(x + j); the y derivative of a vertical step is 0."""
    half = 4
    g = [math.exp(-(i * i) / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi)) for i in range(-half, half + 1)]
    dg = [-i * g[i + half] / (sigma * sigma) for i in range(-half, half + 1)]
    norm = math.sqrt(sum(a * a for a in g) * sum(b * b for b in dg))
    profile = []
    for x in range(width):
        response = sum(dg[j + half] * (1.0 if min(max(x + j, 0), width - 1) >= at else 0.0)
                       for j in range(-half, half + 1))
        profile.append(abs(sum(g) * response / norm))
    return profile


def test_grad_of_a_shifted_step_edge_matches_the_hand_computation():
    width, height = 32, 16
    true, pred = _step(width, height, 16), _step(width, height, 18)
    a, b = _hand_profile(width, 16), _hand_profile(width, 18)
    expected = height * sum((p - q) ** 2 for p, q in zip(a, b)) / 1000
    assert expected > 0
    assert qm.grad(pred, true) == pytest.approx(expected, rel=1e-6)
    assert qm.grad(pred.T.copy(), true.T.copy()) == pytest.approx(expected, rel=1e-6)  # either direction
    assert qm.grad(true, true) == 0


def test_grad_normalises_each_alpha_first():
    true = _step(32, 16, 16)
    assert qm.grad(0.5 * true, true) == pytest.approx(0.0, abs=1e-12)  # same shape, half the height
    assert qm.mad(0.5 * true, true) == pytest.approx(250.0)  # which MAD does see
    assert qm.grad(np.zeros_like(true), true) > 0  # a flat alpha has no edge at all


def test_dtssd_sees_flicker_not_a_steady_error():
    true = [RNG.uniform(0, 1, (20, 30)) for _ in range(5)]
    steady, flicker = qm.ClipScore(), qm.ClipScore()
    for t, frame in enumerate(true):
        fgr = np.zeros((20, 30, 3))
        steady.add(np.clip(frame + 0.1, 0, 2), fgr, frame, fgr)  # no clipping below 2: exact +0.1 everywhere
        flicker.add(frame + 0.05 * (-1) ** t, fgr, frame, fgr)
    assert steady.result()["dtssd"] == pytest.approx(0.0, abs=1e-9)
    assert steady.result()["mad"] == pytest.approx(100.0)
    # each pair changes by ±0.1 against the truth: sqrt(mean(0.1²)) x 1e2 = 10
    assert flicker.result()["dtssd"] == pytest.approx(10.0)
    assert len(flicker.values["dtssd"]) == 4  # pairs only, within the clip
    assert qm.dtssd(true[1], true[0], true[1], true[0]) == 0


def _soft_disk(size: int = 64, radius: float = 10.0) -> np.ndarray:
    """1 inside ``radius``, 0.5 on a one-pixel ring outside it, 0 beyond."""
    y, x = np.mgrid[:size, :size]
    r = np.hypot(x - size // 2, y - size // 2)
    return np.where(r < radius, 1.0, np.where(r < radius + 1, 0.5, 0.0))


def test_edge_band_is_the_ring_dilated_by_three_pixels():
    disk = _soft_disk()
    band = qm.edge_band(disk)
    ring = np.argwhere(disk == 0.5)
    brute = np.zeros_like(band)
    for yy, xx in np.ndindex(disk.shape):
        brute[yy, xx] = (np.abs(ring - (yy, xx)).max(axis=1) <= 3).any()
    assert (band == brute).all()
    assert not band[32, 32] and band[32, 42] and band[32, 45] and not band[32, 46]  # centre, ring, +3, +4


def test_edge_error_is_the_composite_error_inside_the_band_only():
    true = _soft_disk()
    white = np.full(true.shape + (3,), 255.0)
    band = qm.edge_band(true)
    pred = true.copy()
    pred[0, 0] = 1.0  # far outside the band: not counted
    score = qm.ClipScore()
    score.add(pred, white, true, white)
    assert score.result()["edge"] == 0
    pred[32, 42] = 1.0  # a ring pixel (0.5) made opaque: its composite moves by 0.5·|white − green| per channel
    score = qm.ClipScore()
    score.add(pred, white, true, white)
    green = np.array(qm.EDGE_BACKGROUND, float)
    assert score.result()["edge"] == pytest.approx(0.5 * np.abs(255 - green).sum() / (3 * band.sum()))


# ----- ground truth --------------------------------------------------------------------------------------------
def _layer(frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic person layer 80 wide, 100 high: random colours, a soft disk of alpha, two frames apart."""
    fgr = RNG.integers(0, 256, (frames, 100, 80, 3), dtype=np.uint8)
    y, x = np.mgrid[:100, :80]
    alpha = np.stack([np.clip(255 * (30 + t - np.hypot(x - 40, y - 50)), 0, 255).astype(np.uint8)
                      for t in range(frames)])
    return fgr, alpha


STILL = quality_data.ClipSpec("still", quality_data.CARPHONE, "room", height=100 / 120, centre=0.5, drop=0.25,
                              sway=0, breathe=0, tilt_deg=0, pan=(0.1, 0.05), zoom=0.1, turn_deg=1.0)


def test_a_generated_frame_has_the_layers_alpha_exactly():
    fgr, alpha = _layer()
    picture = RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    clip = quality_data.make_clip(STILL, 160, 120, 3, layer=(fgr, alpha), picture=picture, cut=1.0)
    # no motion and scale 1: the layer's bottom centre (40, 100) sits at (80, 120 + 0.25·120): offset (40, 50)
    for t in range(3):
        expected = np.zeros((120, 160), np.uint8)
        expected[50:, 40:120] = alpha[t, :70]
        assert (clip.alpha[t] == expected).all()
        assert (clip.fgr[t, 50:, 40:120] == fgr[t, :70]).all()


def test_a_generated_frame_is_the_composite_of_its_layers():
    fgr, alpha = _layer()
    picture = RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    spec = quality_data.ClipSpec("moving", quality_data.CARPHONE, "room", pan=(0.1, 0.05), zoom=0.1, turn_deg=2.0)
    clip = quality_data.make_clip(spec, 160, 120, 6, layer=(fgr, alpha), picture=picture)
    a = clip.alpha.astype(np.float64)[..., None] / 255
    exact = a * clip.fgr + (1 - a) * clip.background
    assert np.abs(clip.frames - exact).max() <= 0.5 + 1e-3  # I = A·F + (1 − A)·B, rounded to uint8
    assert 0 < (clip.alpha > 0).mean() < 1 and ((clip.alpha > 0) & (clip.alpha < 255)).any()
    assert not (clip.alpha[0] == clip.alpha[5]).all()  # the person moves
    assert not (clip.background[0] == clip.background[5]).all()  # and so does the background
    shorter = quality_data.make_clip(spec, 160, 120, 3, layer=(fgr, alpha), picture=picture)
    assert (shorter.frames == clip.frames[:3]).all()  # a frame does not depend on the clip's length


def test_procedural_backgrounds_are_deterministic():
    first, second = quality_data.background_picture("bokeh"), quality_data.background_picture("bokeh")
    assert first.shape == (*quality_data.BASE_SIZE, 3) and (first == second).all() and first.std() > 10


def test_a_clip_whose_package_is_missing_is_skipped_with_the_reason(monkeypatch):
    missing = quality_data.Person(quality_data.Picture("not-a-package", "no_such_module_q", "x.png"))
    monkeypatch.setitem(quality_data.PERSONS, "astronaut", missing)
    clips, skipped = quality_data.load_clips(160, 120, 2, ["astronaut-garage"])
    assert clips == [] and skipped == {"astronaut-garage": "needs not-a-package (pip install not-a-package)"}
    with pytest.raises(ValueError, match="unknown clip"):
        quality_data.load_clips(160, 120, 2, ["nope"])


# ----- settings and the peer ---------------------------------------------------------------------------------
def test_settings_cover_the_ladder_extras_engines_peer_and_baselines():
    rows = quality.settings_for(360, 640, ["onnxruntime", "torch", "mediapipe"])
    sizes = {quality.internal_size(360, 640, s.ratio) for s in rows if s.role == "ladder"}
    assert sizes == {"480x270", "448x251", "384x216", "352x198", "320x180", "288x162", "256x144"}
    extras = {quality.internal_size(360, 640, s.ratio) for s in rows if s.role == "extra"}
    assert extras == {"640x360", "528x297", "512x288", "496x279", "272x153", "240x135", "192x108", "160x90"}
    combos = {(s.engine, s.fullres) for s in rows if s.role == "engines"}
    assert combos == {("onnxruntime", "exact"), ("torch", "fast"), ("torch", "exact")}
    assert [s.engine for s in rows if s.role in ("peer", "baseline")] == ["mediapipe", "alpha=0", "alpha=1"]
    assert quality.internal_size(720, 1280, quality.settings_for(720, 1280, ["torch"])[0].ratio) == "480x270"


def test_bad_arguments_are_named():
    assert quality.parse_sizes("360p,320x180") == [("360p", 640, 360), ("320x180", 320, 180)]
    with pytest.raises(ValueError, match="size 'big'"):
        quality.parse_sizes("big")
    with pytest.raises(ValueError, match="unknown engine"):
        quality.run_benchmark([("s", 160, 120)], 2, ["tensorrt"])
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        quality.run_benchmark([("s", 160, 120)], 2, ["torch"], threads=0)
    with pytest.raises(ValueError, match="one per size"):
        quality.run_benchmark([("s", 160, 120)], [2, 2], ["torch"])
    assert quality.main(["--sizes", "huge"]) == 2
    assert quality.main(["--frames", "many"]) == 2


def _synthetic_clip(frames: int = 4) -> quality_data.Clip:
    fgr, alpha = _layer(frames)
    picture = RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    return quality_data.make_clip(STILL, 160, 120, frames, layer=(fgr, alpha), picture=picture, cut=1.0)


def test_without_mediapipe_the_peer_is_skipped_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    assert quality.peer_missing().startswith("mediapipe is not importable")
    monkeypatch.setattr(quality.data, "load_clips", lambda *a, **k: ([_synthetic_clip()], {}))
    report = quality.run_benchmark([("tiny", 160, 120), ("tiny2", 160, 120)], 4, ["mediapipe"], progress=sys.stderr)
    lines = [line for line in capsys.readouterr().err.splitlines() if "mediapipe" in line]
    assert len(lines) == 1 and lines[0].startswith("skipped mediapipe: mediapipe is not importable")
    assert [r["setting"] for r in report["rows"]] == ["alpha=0", "alpha=1"] * 2  # once per size
    assert len(report["skipped"]) == 1  # one line for the whole run


@pytest.mark.slow
def test_mediapipe_scores_plausibly_when_installed():
    if quality.peer_missing():
        pytest.skip(quality.peer_missing())
    clip = quality_data.make_clip(quality_data.CLIPS[0], 320, 180, 4)
    truth = [quality.prepare(clip)]
    peer = quality.score(quality.RUNNERS[("mediapipe", "")](quality.Setting("mediapipe", role="peer")), truth)
    empty = quality.score(quality.RUNNERS[("alpha=0", "")](quality.Setting("alpha=0", role="baseline")), truth)
    assert 0 < peer["mad"] < empty["mad"] / 4
    assert peer["edge"] < empty["edge"]


def test_timing_gives_each_runner_its_median(monkeypatch):
    clock = [0.0]  # a fake clock, advanced only by the runners: no real timing in the assertions

    class Costly:
        def __init__(self, costs):
            self.costs, self.steps = costs, 0

        def reset(self):
            pass

        def step(self, frame):
            clock[0] += self.costs[self.steps % len(self.costs)]
            self.steps += 1
            return frame[..., 0], None

    monkeypatch.setattr(quality.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(quality, "BLOCK_GAP_S", 0)
    runners = [Costly([0.001]), Costly([0.010, 0.010, 0.040])]
    ms = quality.time_runners(runners, np.zeros((5, 4, 4, 3), np.uint8), rounds=2, block=3)
    assert runners[0].steps == runners[1].steps == quality.WARMUP_FRAMES + 2 * (3 + 1)
    assert ms[0] == pytest.approx(1.0)
    # the second runner's steps: warm-up 10 10 40, then per block one untimed step and three timed ones:
    # (10) 10 40 10 | (10) 40 10 10: the median is 10 ms (the mean would be 20)
    assert ms[1] == pytest.approx(10.0)


# ----- end to end --------------------------------------------------------------------------------------------
class _Shifted:
    """A deliberately broken setting: the fast path at RVM's ratio, its alpha moved 24 px sideways."""

    def __init__(self, setting):
        self.inner = quality.RUNNERS[("onnxruntime", "fast")](quality.Setting("onnxruntime", "fast", setting.ratio))

    def reset(self):
        self.inner.reset()

    def step(self, frame):
        alpha, fgr = self.inner.step(frame)
        return np.roll(alpha, 24, axis=1), fgr


@pytest.mark.slow
def test_quick_run_writes_table_json_and_chart(monkeypatch, tmp_path, capsys):
    from rvm_live.engine.state import recommended_ratio

    monkeypatch.setitem(quality.RUNNERS, ("broken", ""), _Shifted)
    settings_for = quality.settings_for
    monkeypatch.setattr(quality, "settings_for", lambda h, w, e, q=False: settings_for(h, w, e, q) + [
        quality.Setting("broken", "", recommended_ratio(h, w), "extra")])
    out_json, out_png = tmp_path / "q.json", tmp_path / "q.png"
    args = ["--quick", "--sizes", "360p", "--frames", "4", "--engines", "onnxruntime,torch",
            "--json", str(out_json), "--chart", str(out_png)]
    assert quality.main(args) == 0
    table = capsys.readouterr().out
    assert "MAD×1e3" in table and "dtSSD×1e2" in table and "480x270" in table
    report = json.loads(out_json.read_text())
    assert {"machine", "recipe", "frames_per_clip", "rows", "skipped"} <= report.keys()
    rows = {(r["setting"], r["internal"]): r for r in report["rows"]}
    for row in rows.values():
        assert {"size", "internal", "ms_per_frame", "mad", "mse", "grad", "dtssd", "edge"} <= row.keys()
    top = rows[("onnxruntime fast", "480x270")]
    assert top["ms_per_frame"] > 0 and 0 < top["mad"] < 50
    assert rows[("torch exact", "480x270")]["mad"] == pytest.approx(top["mad"], rel=0.05)
    assert top["mad"] * 10 < rows[("alpha=0", "-")]["mad"] < rows[("alpha=1", "-")]["mad"]
    assert top["mad"] * 2 < rows[("broken", "480x270")]["mad"]
    assert top["edge"] < rows[("broken", "480x270")]["edge"]
    with Image.open(out_png) as image:
        image.verify()
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.size == (quality_report.PANEL_W, quality_report.PANEL_H)


def test_chart_front_and_ticks():
    assert quality_report.front([(10, 5), (20, 3), (15, 6), (30, 3), (5, 9)]) == [4, 0, 1]
    assert quality_report.log_ticks(3.5, 47) == [2, 5, 10, 20, 50]
    assert quality_report.log_ticks(10, 20) == [10, 20]
