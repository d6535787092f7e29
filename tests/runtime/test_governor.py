"""The adaptive-quality governor: a ladder per frame size, down when slow, up only with headroom, hysteresis."""

from __future__ import annotations

import re
import urllib.request

import pytest

from rvm_live.runtime.governor import Governor, ladder_ratios


class SlowEngine:
    """A model of an engine whose time per frame grows with the internal pixel count, plus a fixed part,
    on a machine whose speed the test changes (``load``: 2 = another program takes half the CPU)."""

    def __init__(self, fixed_ms: float, per_ratio2_ms: float) -> None:
        self.fixed_ms, self.per_ratio2_ms, self.load = fixed_ms, per_ratio2_ms, 1.0

    def step_ms(self, ratio: float) -> float:
        return (self.fixed_ms + self.per_ratio2_ms * ratio**2) * self.load


def drive(governor: Governor, engine: SlowEngine, seconds: float, fps: float = 30.0, t0: float = 0.0):
    """Feed the governor one frame per interval for ``seconds``; returns (end time, decisions)."""
    decisions, t = [], t0
    while t < t0 + seconds:
        d = governor.observe(engine.step_ms(governor.ratio), t)
        if d is not None:
            decisions.append((t, d))
        t += 1 / fps
    return t, decisions


def test_ladder_follows_the_frame_size():
    assert ladder_ratios(720, 1280, 0.375) == [0.375, 0.35, 0.3, 0.25, 0.2, 0.15, 0.125]
    assert ladder_ratios(360, 640, 1.0) == [1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25]
    # never so small that the internal image's short side drops under 32 px
    assert min(ladder_ratios(144, 176, 1.0)) * 144 >= 32


def test_governor_steps_down_until_the_rate_holds_and_back_up_when_load_goes():
    ratios = ladder_ratios(720, 1280, 0.375)
    engine = SlowEngine(fixed_ms=8.0, per_ratio2_ms=300.0)  # 0.375 → 50 ms: too slow for 33 ms frames
    gov = Governor(ratios, interval_ms=1000 / 30)
    t, downs = drive(gov, engine, 20.0)
    assert downs and all(d.ratio < d.previous for _, d in downs)
    assert engine.step_ms(gov.ratio) <= 1000 / 30  # it holds the source's rate now
    assert engine.step_ms(ratios[ratios.index(gov.ratio) - 1]) > 0.7 * 1000 / 30  # and no lower than needed
    # at most one change per dwell period
    times = [when for when, _ in downs]
    assert all(b - a >= gov.dwell_s for a, b in zip(times, times[1:]))
    # another program takes half the machine: down further; it leaves: back up, one rung at a time
    engine.load = 2.0
    t, more = drive(gov, engine, 20.0, t0=t)
    assert more and gov.ratio < downs[-1][1].ratio
    engine.load = 1.0
    t, ups = drive(gov, engine, 90.0, t0=t)
    assert ups and all(d.ratio > d.previous for _, d in ups)
    assert gov.ratio > more[-1][1].ratio and engine.step_ms(gov.ratio) <= 1000 / 30  # and still holds the rate
    times = [when for when, _ in ups]
    assert all(b - a >= gov.up_dwell_s for a, b in zip(times, times[1:]))


def test_far_too_slow_jumps_several_rungs_at_once_without_overshooting():
    """At the start on a slow machine (RVM's own ratio costs 3x the interval) the first step goes straight to
    the rung that pixel scaling says could fit, not one rung per dwell; it never lands below what is needed."""
    ratios = ladder_ratios(360, 640, 0.75)  # [0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25]
    engine = SlowEngine(fixed_ms=12.0, per_ratio2_ms=160.0)  # 0.75 → 102 ms, 0.4 → 37.6, 0.3 → 26.4
    gov = Governor(ratios, interval_ms=1000 / 30)
    _, decisions = drive(gov, engine, 12.0)
    assert [d.ratio for _, d in decisions] == [0.4, 0.3]  # was 0.7, 0.6, 0.5, 0.4, 0.3: five dwells
    assert decisions[0][0] < gov.dwell_s + 0.5


def test_governor_keeps_a_fast_stream_at_the_top():
    gov = Governor(ladder_ratios(360, 640, 1.0), interval_ms=1000 / 30)
    _, decisions = drive(gov, SlowEngine(fixed_ms=3.0, per_ratio2_ms=10.0), 30.0)
    assert decisions == [] and gov.ratio == 1.0


def test_governor_does_not_flicker_at_the_edge():
    """Just too slow at one rung, comfortably fast at the next: it settles, it does not oscillate."""
    ratios = [0.5, 0.4, 0.3]
    engine = SlowEngine(fixed_ms=4.0, per_ratio2_ms=125.0)  # 0.5 → 35 ms (> 33), 0.4 → 24 ms
    gov = Governor(ratios, interval_ms=1000 / 30)
    _, decisions = drive(gov, engine, 120.0)
    assert [d.ratio for _, d in decisions] == [0.4]


def test_a_latency_budget_under_the_interval_binds():
    gov = Governor([0.5, 0.25], interval_ms=100.0, budget_ms=40.0)  # a 10 fps source, 40 ms budget
    _, decisions = drive(gov, SlowEngine(fixed_ms=10.0, per_ratio2_ms=160.0), 10.0, fps=10)  # 0.5 → 50 ms
    assert [d.ratio for _, d in decisions] == [0.25]


def test_an_empty_ladder_is_refused():
    with pytest.raises(ValueError):
        Governor([], interval_ms=33.3)


def _alphas(engine, frames, ratios, *, carry):
    """Alpha per frame of one stream whose ratio follows ``ratios``; a change carries the state (resized, as
    the governor does) or resets it."""
    state, out = engine.new_state(ratios[0]), []
    for i, (frame, ratio) in enumerate(zip(frames, ratios)):
        if i and ratio != ratios[i - 1]:
            state.set_ratio(ratio)
            if not carry:
                state.reset()
        out.append(engine.infer([frame], [state]).pha.clone())
    return out


def test_carrying_the_state_across_a_ratio_change_pops_less_than_a_reset(mobilenet, carphone_frames):
    """The pop after a switch: mean |Δα| against a run at the new ratio from the start, 5 frames after it."""
    import torch

    from rvm_live.engine import Engine

    engine, frames, switch_at = Engine(model=mobilenet, device="cpu"), carphone_frames[:20], 15
    reference = _alphas(engine, frames, [0.8] * 20, carry=True)
    switched = [1.0] * switch_at + [0.8] * (20 - switch_at)  # two ladder rungs
    pop = {name: float(torch.stack([(a - b).abs().mean() for a, b in zip(
        _alphas(engine, frames, switched, carry=carry)[switch_at:], reference[switch_at:])]).mean())
        for name, carry in (("carried", True), ("reset", False))}
    print(f"pop after 1.0 -> 0.8: carried {pop['carried']:.2e}, reset {pop['reset']:.2e}")
    assert pop["carried"] < pop["reset"]


def test_resize_state_gives_the_shapes_the_network_makes(mobilenet, carphone_frames):
    import torch

    from rvm_live.engine.state import resize_state, state_sizes

    src = torch.from_numpy(carphone_frames[0]).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        _, _, *state = mobilenet(src, downsample_ratio=1.0)
        _, _, *expected = mobilenet(src, downsample_ratio=0.6)
        moved = resize_state(state, state_sizes(144, 176, 0.6))
        assert [tuple(r.shape) for r in moved] == [tuple(r.shape) for r in expected]
        mobilenet(src, *moved, downsample_ratio=0.6)  # and the network takes it
    as_numpy = resize_state([r.numpy() for r in state], state_sizes(144, 176, 0.6))
    assert [a.shape for a in as_numpy] == [tuple(r.shape) for r in expected]


def test_a_slow_engine_makes_a_live_stream_lower_its_ratio(tmp_path, carphone_frames, monkeypatch, caplog):
    """The real daemon on a realtime 640x360 source, with the real engine slowed down (as another program
    taking the CPU would): the governor steps down, and stats, metrics and the log say so."""
    import time

    import av
    import cv2
    from helpers import RecordingSink

    from rvm_live.config import Config
    from rvm_live.runtime.daemon import Daemon
    from rvm_live.serve.control import ControlServer

    clip = tmp_path / "360p.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for image in carphone_frames[:60]:
            frame = av.VideoFrame.from_ndarray(cv2.resize(image, (640, 360)), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    config = Config(source=str(clip), realtime=True, loop=True, fullres="fast", engine="onnxruntime")
    sink = RecordingSink("live", live=True)
    daemon = Daemon(config, sinks=[sink])
    real = daemon.engine.infer  # the network's half of a frame, which grows with the ratio

    def slowed(images, states):
        time.sleep(0.15 * (states[0].ratio or 1.0) ** 2)  # 84 ms at the top rung: far behind a 30 fps source
        return real(images, states)

    monkeypatch.setattr(daemon.engine, "infer", slowed)
    caplog.set_level("INFO", logger="rvm_live")
    daemon.start()
    try:
        with ControlServer(daemon) as server:
            deadline = time.monotonic() + 60
            while daemon.stats()["quality_changes"] < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            stats = daemon.stats()
            metrics = urllib.request.urlopen("http://{}:{}/metrics".format(*server.address), timeout=10).read()
    finally:
        daemon.stop()
        daemon.wait(10)
        daemon.close()
    assert stats["quality"] == "auto" and stats["quality_changes"] >= 1
    assert stats["downsample_ratio"] < 1.0
    assert f'rvm_live_downsample_ratio{{stream="0"}} {stats["downsample_ratio"]}' in metrics.decode()
    changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quality: downsample 0.75 -> ")]
    assert changes and re.fullmatch(r"quality: downsample 0\.75 -> 0\.[1-6]\d* \(\d+ ms per frame > 33 ms\)",
                                    changes[0]), caplog.text
    sizes = {f.image.shape for _, f in sink.frames}
    assert sizes == {(360, 640, 3)}  # the output keeps its size whatever the internal one
