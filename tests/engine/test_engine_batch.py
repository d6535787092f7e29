"""Engine: several streams in one infer call, each with its own StreamState, on both runtimes and both
full-resolution stages; what render gives each stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rvm_live.compositing.backgrounds import composite, parse_background
from rvm_live.engine import Engine, RenderPlan, StreamState, state_sizes


@pytest.fixture(scope="module")
def engines(mobilenet):
    return {"torch": Engine(model=mobilenet, device="cpu"), "onnxruntime": Engine(runtime="onnxruntime")}


@pytest.fixture(scope="module")
def two_streams(carphone_frames):
    """Two different contents of one size: the clip, and the clip mirrored and rolled (a different scene)."""
    a = carphone_frames[:5]
    b = np.ascontiguousarray(np.roll(carphone_frames[40:45, :, ::-1], 30, axis=2))
    return a, b


def _alpha(out, b=0):
    return out.pha[b:b + 1].clone()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_two_streams_batched_equal_each_stepped_alone(engines, two_streams, backend):
    engine = engines[backend]
    a_frames, b_frames = two_streams
    batched = [engine.new_state(0.5), engine.new_state(0.5)]
    alone = [engine.new_state(0.5), engine.new_state(0.5)]
    worst = 0.0
    for t, (a, b) in enumerate(zip(a_frames, b_frames)):
        if t == 3:  # one stream restarts mid-way: zeros for it, carried state for the other, in one batch
            batched[1].reset()
            alone[1].reset()
        out = engine.infer([a, b], batched)
        together = (_alpha(out, 0), _alpha(out, 1))
        separate = (_alpha(engine.infer([a], [alone[0]])), _alpha(engine.infer([b], [alone[1]])))
        for x, y in zip(together, separate):
            worst = max(worst, float((x - y).abs().max()))
        assert float((together[0] - together[1]).abs().max()) > 0.05  # really two different streams
    assert worst <= 1e-4, worst
    for joint, single in zip(batched, alone):  # the states never mixed
        for r_joint, r_single in zip(joint.rec, single.rec):
            torch.testing.assert_close(r_joint, r_single, atol=1e-4, rtol=0)


def test_batched_composite_equals_per_frame(engines, two_streams):
    engine = engines["torch"]
    out = engine.infer([two_streams[0][0], two_streams[1][0]], [engine.new_state(), engine.new_state()])
    green, blur = parse_background("green"), parse_background("blur:6")
    batch = composite(out.fgr, out.pha, [green, blur], out.src)
    assert batch.image.shape == (2, 144, 176, 3) and batch.alpha.shape == (2, 144, 176)
    for b, background in enumerate((green, blur)):
        single = composite(out.fgr[b:b + 1], out.pha[b:b + 1], background, out.src[b:b + 1])
        assert torch.equal(batch.image[b], single.image) and torch.equal(batch.alpha[b], single.alpha)
    one_bg = composite(out.fgr, out.pha, green, out.src, threshold=0.5)
    assert one_bg.image.shape == (2, 144, 176, 3)
    with pytest.raises(ValueError, match="all transparent or none"):
        composite(out.fgr, out.pha, [green, parse_background("transparent")], out.src)
    with pytest.raises(ValueError, match="2 frames but 3 backgrounds"):
        composite(out.fgr, out.pha, [green] * 3, out.src)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_set_ratio_carries_the_state_resized(engines, carphone_frames, backend):
    engine = engines[backend]
    state = engine.new_state(0.5)
    with pytest.raises(ValueError, match="no frame size yet"):
        state.set_ratio(0.25)
    for frame in carphone_frames[:3]:
        engine.infer([frame], [state])
    before = [r.clone() for r in state.rec]
    state.set_ratio(0.25)
    assert state.ratio == 0.25 and state.ratio_setting == 0.5 and state.size == (144, 176)
    assert [tuple(r.shape[-2:]) for r in state.rec] == state_sizes(144, 176, 0.25) == [(18, 22), (9, 11), (5, 6),
                                                                                     (3, 3)]
    for old, new in zip(before, state.rec):
        assert new.shape[:2] == old.shape[:2]
        expected = F.interpolate(old.float(), size=new.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(new.float(), expected)
    # the network takes the carried state at the new ratio, and it is not a reset: it remembers the stream
    carried = _alpha(engine.infer([carphone_frames[3]], [state]))
    fresh = _alpha(engine.infer([carphone_frames[3]], [engine.new_state(0.25)]))
    assert carried.shape == (1, 1, 144, 176) and float((carried - fresh).abs().max()) > 1e-3
    assert [tuple(r.shape[-2:]) for r in state.rec] == state_sizes(144, 176, 0.25)


def test_state_sizes_match_the_network_for_odd_sizes(engines):
    engine = engines["torch"]
    for (h, w, ratio) in ((145, 177, 0.37), (101, 77, 1.0), (64, 96, 0.5)):
        state = engine.new_state(ratio)
        engine.infer([np.zeros((h, w, 3), np.uint8)], [state])
        assert [tuple(r.shape[-2:]) for r in state.rec] == state_sizes(h, w, ratio)


def test_new_size_resets_the_state_and_recomputes_auto_ratio(engines, carphone_frames):
    engine = engines["torch"]
    state = engine.new_state()
    engine.infer([carphone_frames[0]], [state])
    assert state.size == (144, 176) and state.ratio == 1.0 and state.rec[0] is not None
    big = np.zeros((600, 800, 3), np.uint8)
    out = engine.infer([big], [state])
    assert state.size == (600, 800) and state.ratio == pytest.approx(0.6)  # 480 / 800
    assert out.pha.shape == (1, 1, 600, 800) and state.rec[0].shape[-2:] == (180, 240)


def test_mismatched_calls_are_refused_with_a_reason(engines, carphone_frames):
    engine = engines["torch"]
    frame = carphone_frames[0]
    state = engine.new_state()
    with pytest.raises(ValueError, match="twice"):
        engine.infer([frame, frame], [state, state])
    with pytest.raises(ValueError, match="2 frames but 1 states"):
        engine.infer([frame, frame], [state])
    with pytest.raises(TypeError, match="float32 != uint8"):
        engine.infer([frame.astype(np.float32)], [state])
    assert isinstance(state, StreamState)
    with pytest.raises(ValueError, match="0 < r <= 1"):
        state.set_ratio(1.5)  # every state validates, whatever runs it
    with pytest.raises(ValueError, match="1 streams but 2 render plans"):
        engine.render(engine.infer([frame], [state]), [RenderPlan(parse_background("green"))] * 2)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_streams_at_different_ratios_and_sizes_share_one_call_and_each_equals_its_own(engines, carphone_frames,
                                                                                      backend):
    """The README's example: right after ``cam1.set_ratio(0.25)`` the next infer takes both streams (each at
    its own ratio, and a third of another size), and every stream gets what it gets alone."""
    engine = engines[backend]
    small = np.ascontiguousarray(carphone_frames[:4, :96, :128])
    joint = [engine.new_state(0.5), engine.new_state(0.5), engine.new_state(0.5)]
    alone = [engine.new_state(0.5), engine.new_state(0.5), engine.new_state(0.5)]
    for t in range(4):
        if t == 2:
            for state in (joint[0], alone[0]):
                state.set_ratio(0.25)
        frames = [carphone_frames[t], carphone_frames[t + 40], small[t]]
        matte = engine.infer(frames, joint)
        assert len(matte.rows) == (2 if t < 2 else 3)  # one call per (size, ratio)
        for i, (frame, state) in enumerate(zip(frames, alone)):
            single = engine.infer([frame], [state])
            got = matte.rows[[k for k, rows in enumerate(matte.rows) if i in rows.slots][0]]
            r = got.slots.index(i)
            assert float((got.pha[r:r + 1] - single.pha).abs().max()) <= 1e-4
    assert [s.ratio for s in joint] == [0.25, 0.5, 0.5]
    with pytest.raises(ValueError, match="different sizes"):
        matte.pha  # noqa: B018  (three frames of two sizes: no one tensor)
    pictures = engine.render(matte, [RenderPlan(parse_background("green"))] * 3)
    assert [p.image.shape for p in pictures] == [(144, 176, 3), (144, 176, 3), (96, 128, 3)]


@pytest.fixture(scope="module")
def fast_engines(mobilenet):
    return {"torch": Engine(model=mobilenet, device="cpu", fullres="fast"),
            "onnxruntime": Engine(runtime="onnxruntime", fullres="fast")}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_fast_fullres_batches_streams_and_renders_what_exact_renders(engines, fast_engines, two_streams, backend):
    exact, fast = engines[backend], fast_engines[backend]
    a_frames, b_frames = two_streams
    states = {"exact": [exact.new_state(0.5), exact.new_state(0.25)], "fast": [fast.new_state(0.5),
                                                                              fast.new_state(0.25)]}
    plans = [RenderPlan(parse_background("#203040")), RenderPlan(parse_background("transparent"), 0.5, True)]
    for a, b in zip(a_frames, b_frames):
        pictures = {name: engine.render(engine.infer([a, b], states[name]), plans)
                    for name, engine in (("exact", exact), ("fast", fast))}
        for want, got in zip(pictures["exact"], pictures["fast"]):
            assert want.image.shape == got.image.shape
            assert np.abs(want.alpha.astype(int) - got.alpha.astype(int)).max() <= 1
            assert np.abs(want.image.astype(int) - got.image.astype(int)).max() <= 2
    assert pictures["fast"][1].image.shape == (144, 176, 4) and set(np.unique(pictures["fast"][1].alpha)) == {0, 255}
    assert isinstance(states["fast"][0].rec[0], np.ndarray) == (backend == "onnxruntime")
    with pytest.raises(TypeError, match="coefficients"):
        fast.infer([a_frames[0]], [fast.new_state()]).fgr  # noqa: B018


def test_rgba_is_decided_by_the_plan(engines, two_streams):
    """A transparent background comes down as RGBA only for a stream whose outputs take alpha; the others get
    the foreground alone, RGB, from the same engine."""
    engine = engines["torch"]
    transparent = parse_background("transparent")
    matte = engine.infer([two_streams[0][0], two_streams[1][0]], [engine.new_state(), engine.new_state()])
    rgb, rgba = engine.render(matte, [RenderPlan(transparent, rgba=False), RenderPlan(transparent, rgba=True)])
    assert rgb.image.shape == (144, 176, 3) and rgba.image.shape == (144, 176, 4)
    fgr = (matte.fgr[0].permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(rgb.image, fgr)
    np.testing.assert_array_equal(rgba.image[..., 3], rgba.alpha)
