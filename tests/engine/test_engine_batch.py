"""Engine: several streams in one network call, each with its own StreamState, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rvm_live.compositing.backgrounds import composite, parse_background
from rvm_live.engine import Engine, StreamState, state_sizes


@pytest.fixture(scope="module")
def engines(mobilenet):
    return {"torch": Engine(model=mobilenet, device="cpu"), "onnxruntime": Engine(engine="onnxruntime")}


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
        out = engine.step([a, b], batched)
        together = (_alpha(out, 0), _alpha(out, 1))
        separate = (_alpha(engine.step([a], [alone[0]])), _alpha(engine.step([b], [alone[1]])))
        for x, y in zip(together, separate):
            worst = max(worst, float((x - y).abs().max()))
        assert float((together[0] - together[1]).abs().max()) > 0.05  # really two different streams
    assert worst <= 1e-4, worst
    for joint, single in zip(batched, alone):  # the states never mixed
        for r_joint, r_single in zip(joint.rec, single.rec):
            torch.testing.assert_close(r_joint, r_single, atol=1e-4, rtol=0)


def test_batched_composite_equals_per_frame(engines, two_streams):
    engine = engines["torch"]
    out = engine.step([two_streams[0][0], two_streams[1][0]], [engine.new_state(), engine.new_state()])
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
        engine.step([frame], [state])
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
    carried = _alpha(engine.step([carphone_frames[3]], [state]))
    fresh = _alpha(engine.step([carphone_frames[3]], [engine.new_state(0.25)]))
    assert carried.shape == (1, 1, 144, 176) and float((carried - fresh).abs().max()) > 1e-3
    assert [tuple(r.shape[-2:]) for r in state.rec] == state_sizes(144, 176, 0.25)


def test_state_sizes_match_the_network_for_odd_sizes(engines):
    engine = engines["torch"]
    for (h, w, ratio) in ((145, 177, 0.37), (101, 77, 1.0), (64, 96, 0.5)):
        state = engine.new_state(ratio)
        engine.step([np.zeros((h, w, 3), np.uint8)], [state])
        assert [tuple(r.shape[-2:]) for r in state.rec] == state_sizes(h, w, ratio)


def test_new_size_resets_the_state_and_recomputes_auto_ratio(engines, carphone_frames):
    engine = engines["torch"]
    state = engine.new_state()
    engine.step([carphone_frames[0]], [state])
    assert state.size == (144, 176) and state.ratio == 1.0 and state.rec[0] is not None
    big = np.zeros((600, 800, 3), np.uint8)
    out = engine.step([big], [state])
    assert state.size == (600, 800) and state.ratio == pytest.approx(0.6)  # 480 / 800
    assert out.pha.shape == (1, 1, 600, 800) and state.rec[0].shape[-2:] == (180, 240)


def test_mismatched_steps_are_refused_with_a_reason(engines, carphone_frames):
    engine = engines["torch"]
    frame = carphone_frames[0]
    with pytest.raises(ValueError, match="share a ratio"):
        engine.step([frame, frame], [engine.new_state(0.5), engine.new_state(0.25)])
    with pytest.raises(ValueError, match="share a size"):
        engine.step([frame, np.ascontiguousarray(frame[:72])], [engine.new_state(), engine.new_state()])
    state = engine.new_state()
    with pytest.raises(ValueError, match="twice"):
        engine.step([frame, frame], [state, state])
    with pytest.raises(ValueError, match="2 frames but 1 states"):
        engine.step([frame, frame], [state])
    with pytest.raises(TypeError, match="float32 != uint8"):
        engine.step([frame.astype(np.float32)], [state])
    assert isinstance(state, StreamState)
