"""The adaptive-quality governor: a ladder per frame size, down when slow, up only with headroom, hysteresis."""

from __future__ import annotations

import re
import urllib.request

import pytest
from helpers import write_frames

from rvm_live.bus import QualityChanged, QualityFloor
from rvm_live.runtime.governor import QUALITY_FLOOR_PX, Governor, RungMemory, calibrated_rung, ladder_ratios


class SlowEngine:
    """A model of an engine whose time per frame grows with the internal pixel count, plus a fixed part,
    on a machine whose speed the test changes (``load``: 2 = another program takes half the CPU)."""

    def __init__(self, fixed_ms: float, per_ratio2_ms: float) -> None:
        self.fixed_ms, self.per_ratio2_ms, self.load = fixed_ms, per_ratio2_ms, 1.0

    def step_ms(self, ratio: float) -> float:
        return (self.fixed_ms + self.per_ratio2_ms * ratio**2) * self.load


def drive(governor: Governor, engine: SlowEngine, seconds: float, fps: float = 30.0, t0: float = 0.0,
          kind: type = QualityChanged):
    """Feed the governor one frame per interval for ``seconds``; returns (end time, its events of ``kind``)."""
    decisions, t = [], t0
    while t < t0 + seconds:
        d = governor.observe(engine.step_ms(governor.ratio), t)
        if isinstance(d, kind):
            decisions.append((t, d))
        t += 1 / fps
    return t, decisions


def test_ladder_follows_the_frame_size():
    assert ladder_ratios(720, 1280, 0.375) == [0.375, 0.35, 0.3, 0.275, 0.25, 0.225, 0.2]
    assert ladder_ratios(360, 640, 0.75) == [0.75, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4]
    # a frame already under the floor keeps its size: nothing lower is worth having
    assert ladder_ratios(144, 176, 1.0) == [1.0]


@pytest.mark.parametrize("height, width", [(360, 640), (720, 1280), (1080, 1920), (2160, 3840), (1280, 720),
                                           (480, 854), (768, 1366)])
def test_the_ladder_never_goes_below_the_quality_floor(height, width):
    """The floor comes from the quality benchmark: below a 256 px internal long side the matte collapses."""
    from rvm_live.engine.state import recommended_ratio

    ratios = ladder_ratios(height, width, recommended_ratio(height, width))
    internal = [int(max(height, width) * r) for r in ratios]  # the network's long side (floor, as its resize)
    assert len(ratios) >= 5 and internal == sorted(internal, reverse=True)
    assert min(internal) >= QUALITY_FLOOR_PX - 1 and min(internal) <= QUALITY_FLOOR_PX  # the floor is the last rung


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
    ratios = ladder_ratios(360, 640, 0.75)  # [0.75, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4]
    engine = SlowEngine(fixed_ms=6.0, per_ratio2_ms=140.0)  # 0.75 → 84.8 ms, 0.45 → 34.4, 0.4 → 28.4
    gov = Governor(ratios, interval_ms=1000 / 30)
    _, decisions = drive(gov, engine, 12.0)
    assert [d.ratio for _, d in decisions] == [0.45, 0.4]  # not 0.7, 0.6, 0.55, ...: one dwell per rung
    # a cold start decides after its warm-up and a few measured frames (a short calibration), not a dwell
    assert decisions[0][0] < 0.5 and decisions[1][0] - decisions[0][0] >= gov.dwell_s


def test_at_the_floor_it_drops_frames_and_says_so_never_going_lower():
    """Even the floor cannot hold 30 fps on this (modelled) machine: the governor stays at the floor, says so
    once, and says once when the floor holds again; quality never falls off the cliff below it."""
    ratios = ladder_ratios(720, 1280, 0.375)
    engine = SlowEngine(fixed_ms=30.0, per_ratio2_ms=400.0)  # the floor (0.2) → 46 ms > 33
    gov = Governor(ratios, interval_ms=1000 / 30)
    seen = []
    t = 0.0
    for _ in range(3):  # 30 s, three ways of looking at the same run
        t, events = drive(gov, engine, 10.0, t0=t, kind=object)
        seen += [e for _, e in events]
        assert gov.ratio >= ratios[-1] - 1e-9
    floor_events = [e for e in seen if isinstance(e, QualityFloor)]
    assert gov.ratio == ratios[-1] and gov.overloaded
    assert [(e.overloaded, e.ratio) for e in floor_events] == [(True, ratios[-1])]  # said once, not per frame
    assert floor_events[0].step_ms > floor_events[0].limit_ms
    engine.load = 0.5  # the other program goes: the floor holds again, said once
    t, events = drive(gov, engine, 2.5, t0=t, kind=QualityFloor)
    assert [e.overloaded for _, e in events] == [False] and not gov.overloaded


def test_a_settled_rung_is_remembered_and_the_next_start_begins_there(tmp_path):
    memory = RungMemory(tmp_path / "governor.json")
    ratios = ladder_ratios(720, 1280, 0.375)
    engine = SlowEngine(fixed_ms=8.0, per_ratio2_ms=300.0)  # settles at 0.275
    gov = Governor(ratios, interval_ms=1000 / 30, memory=memory, memory_key="onnxruntime/fast/1280x720@30")
    drive(gov, engine, 30.0)
    settled = gov.ratio
    assert settled < ratios[0] and memory.recall("onnxruntime/fast/1280x720@30") == settled
    again = Governor(ratios, interval_ms=1000 / 30, memory=RungMemory(tmp_path / "governor.json"),
                     memory_key="onnxruntime/fast/1280x720@30")
    assert again.ratio == settled  # the next start: no seconds spent at rungs this machine cannot hold
    _, changes = drive(again, engine, 10.0)
    assert changes == []
    other = Governor(ratios, interval_ms=1000 / 30, memory=memory, memory_key="torch/fast/1280x720@30")
    assert other.ratio == ratios[0]  # another kind of stream starts at the top
    assert RungMemory(None).recall("x") is None  # off: nothing recalled (and nothing written)


def test_a_calibrated_start_is_the_best_rung_a_line_through_the_measured_times_says_fits():
    ratios = ladder_ratios(720, 1280, 0.375)  # 0.375, 0.35, 0.3, 0.275, 0.25, 0.225, 0.2
    engine = SlowEngine(fixed_ms=6.0, per_ratio2_ms=400.0)  # top 62 ms, floor 22 ms
    costs = {0: engine.step_ms(ratios[0]), len(ratios) - 1: engine.step_ms(ratios[-1])}
    rung = calibrated_rung(ratios, costs, 1000 / 30)
    fits = [r for r in ratios if engine.step_ms(r) <= 0.85 * 1000 / 30]
    assert ratios[rung] == fits[0] == 0.225  # the line is exact for this engine: the first rung that fits
    assert calibrated_rung(ratios, {0: 20.0, 6: 10.0}, 1000 / 30) == 0  # fast: the top
    assert calibrated_rung(ratios, {0: 300.0, 6: 90.0}, 1000 / 30) == len(ratios) - 1  # hopeless: the floor
    assert calibrated_rung(ratios, {0: 25.0, 6: 40.0}, 1000 / 30) == 0  # noise (top cheaper): flat at the top's
    assert calibrated_rung([0.5], {0: 90.0}, 1000 / 30) == 0
    with pytest.raises(ValueError):
        calibrated_rung(ratios, {}, 33.3)


def test_a_calibrated_start_skips_the_slow_first_second_and_still_corrects_itself():
    ratios = ladder_ratios(720, 1280, 0.375)
    engine = SlowEngine(fixed_ms=6.0, per_ratio2_ms=400.0)
    gov = Governor(ratios, interval_ms=1000 / 30)
    event = gov.calibrate({0: engine.step_ms(ratios[0]), 6: engine.step_ms(ratios[6])})
    assert isinstance(event, QualityChanged) and event.previous == 0.375 and event.ratio == gov.ratio == 0.225
    assert event.reason.startswith("calibrated: 62 ms at 0.375, 22 ms at 0.2")
    _, decisions = drive(gov, engine, 30.0)  # it was right (26 ms; 0.25 would take 31): nothing to change
    assert decisions == [] and gov.ratio == 0.225
    engine.load = 2.0  # the calibration was too kind (another program came): the quick first decision fixes it
    slow = Governor(ratios, interval_ms=1000 / 30)
    slow.calibrate({0: 62.0 / 2, 6: 22.0 / 2})
    assert slow.ratio == 0.35
    t, decisions = drive(slow, engine, 1.0)
    assert decisions and decisions[0][0] < 0.5 and slow.ratio < decisions[0][1].previous
    assert Governor(ratios, interval_ms=1000 / 30).calibrate({0: 20.0, 6: 10.0}) is None  # fits at the top


def test_a_climb_that_does_not_fit_is_undone_within_a_few_frames():
    """The rung above costs more than pixel-count scaling predicts (load came back, or the network is not
    proportional there): the climb is a trial, left after the warm-up and three measured frames, not after a
    whole dwell of frames piling up; and not retried while that measurement is fresh."""

    class Step(SlowEngine):
        def step_ms(self, ratio: float) -> float:
            return 40.0 if ratio > 0.47 else 20.0  # 0.45 → 20 ms, so 0.5 is predicted at 24.7 ms: it is 40

    gov = Governor([0.5, 0.45], interval_ms=1000 / 30, start=1)
    _, changes = drive(gov, Step(0, 0), 25.0)
    assert [d.ratio for _, d in changes] == [0.5, 0.45]  # up once, back once, no second try within MEMORY_S
    (climbed, _), (left, _) = changes
    assert left - climbed < 0.4  # 5 warm-up + 3 measured frames at 30 fps, not the 2 s dwell
    assert gov.ratio == 0.45


def test_frames_while_the_engine_settles_are_not_measured_but_not_for_ever():
    """A new rung's first frames run while the engine compiles for it (slow, and the compile takes CPU): a trial
    climb is judged on what the rung costs once ready, not on those; an engine that never stops settling is
    measured anyway after SETTLING_MAX_S."""
    gov = Governor([0.5, 0.45], interval_ms=1000 / 30, start=1)
    t, _ = drive(gov, SlowEngine(0, 80.0), 5.5)  # 0.45 → 16 ms: climbs to 0.5 (20 ms) at 5 s
    assert gov.ratio == 0.5
    for i in range(30):  # one second of 60 ms frames while the engine compiles: skipped
        assert gov.observe(60.0, t + i / 30, settling=True) is None
    t, changes = drive(gov, SlowEngine(0, 80.0), 10.0, t0=t + 1)  # ready: 20 ms, it stays
    assert changes == [] and gov.ratio == 0.5
    stuck = Governor([0.5, 0.45], interval_ms=1000 / 30)
    events = [stuck.observe(60.0, i / 30, settling=True) for i in range(150)]  # settling for 5 s: too long
    assert any(isinstance(e, QualityChanged) for e in events) and stuck.ratio == 0.45


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


@pytest.mark.slow
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


def clip_360p(tmp_path, carphone_frames):
    """The demo clip at 640x360, 60 frames, H.264."""
    import cv2

    clip = tmp_path / "360p.mp4"
    write_frames(clip, [cv2.resize(image, (640, 360)) for image in carphone_frames[:60]], rate=30)
    return clip


@pytest.mark.slow
def test_a_slow_engine_makes_a_live_stream_lower_its_ratio(tmp_path, carphone_frames, monkeypatch, caplog):
    """The real daemon on a realtime 640x360 source, with the real engine slowed down (as another program
    taking the CPU would): the governor steps down, and stats, metrics and the log say so."""
    import time

    from helpers import RecordingSink

    from rvm_live.config import Config
    from rvm_live.runtime.daemon import Daemon
    from rvm_live.serve.control import ControlServer

    clip = clip_360p(tmp_path, carphone_frames)
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
            # the calibrated start is posted before the first frame is matted: wait for a frame at the new rung
            while (daemon.stats()["quality_changes"] < 1 or not sink.frames) and time.monotonic() < deadline:
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
    # a fresh stream is calibrated before its first frame (the slowed top rung does not fit): the first change
    changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quality: downsample 0.75 -> ")]
    assert changes and re.fullmatch(r"quality: downsample 0\.75 -> 0\.[1-6]\d* \(calibrated: \d+ ms at 0\.75, "
                                    r"\d+ ms at 0\.4\)", changes[0]), caplog.text
    sizes = {f.image.shape for _, f in sink.frames}
    assert sizes == {(360, 640, 3)}  # the output keeps its size whatever the internal one


@pytest.mark.slow
def test_a_fresh_live_stream_is_calibrated_before_its_first_frame(tmp_path, carphone_frames, monkeypatch, caplog):
    """No remembered rung: the daemon times its real engine (slowed as a busy machine would be) at the top and
    the floor on the first frame, and the stream's own first frame already runs at the rung that fits: none of
    its frames waits for the top rung's 84 ms."""
    import time

    from helpers import RecordingSink

    from rvm_live.config import Config
    from rvm_live.engine.state import ratio_for
    from rvm_live.runtime.daemon import Daemon

    config = Config(source=str(clip_360p(tmp_path, carphone_frames)), realtime=True, loop=True, fullres="fast",
                    engine="onnxruntime")
    sink = RecordingSink("live", live=True)
    daemon = Daemon(config, sinks=[sink])
    real, stream_ratios, probes = daemon.engine.infer, [], []

    def slowed(images, states):
        ratio = states[0].ratio or ratio_for(states[0].ratio_setting, *images[0].shape[:2])  # not stepped yet
        time.sleep(0.15 * ratio ** 2)
        (stream_ratios if states[0] is daemon.sessions[0].state else probes).append(ratio)
        return real(images, states)

    monkeypatch.setattr(daemon.engine, "infer", slowed)
    caplog.set_level("INFO", logger="rvm_live")
    daemon.start()
    try:
        deadline = time.monotonic() + 60
        while len(sink.frames) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.stop()
        daemon.wait(10)
        daemon.close()
    ratios = ladder_ratios(360, 640, 0.75)
    assert sorted(set(probes)) == [ratios[-1], ratios[0]]  # the top and the floor were timed, from fresh states
    assert stream_ratios and stream_ratios[0] < ratios[0]  # the stream never ran at the top
    assert max(stream_ratios) < ratios[0] and len(sink.frames) >= 5
    assert "(calibrated: " in caplog.text


@pytest.mark.slow
def test_a_machine_too_slow_even_for_the_floor_drops_frames_not_quality(tmp_path, carphone_frames, monkeypatch,
                                                                        caplog):
    """The real daemon, its real engine slowed so that even the floor takes ~100 ms a frame: the stream goes to
    the floor and no lower, keeps delivering frames (the live queue drops the rest), and stats and the log say
    it is dropping frames at the floor."""
    import time

    from helpers import RecordingSink

    from rvm_live.config import Config
    from rvm_live.runtime.daemon import Daemon

    config = Config(source=str(clip_360p(tmp_path, carphone_frames)), realtime=True, loop=True, fullres="fast",
                    engine="onnxruntime")
    sink = RecordingSink("live", live=True)
    daemon = Daemon(config, sinks=[sink])
    real = daemon.engine.infer

    def slowed(images, states):
        time.sleep(0.1)  # whatever the ratio: another program has the CPU
        return real(images, states)

    monkeypatch.setattr(daemon.engine, "infer", slowed)
    caplog.set_level("INFO", logger="rvm_live")
    ratios_seen = set()
    daemon.start()
    try:
        deadline = time.monotonic() + 90
        while not daemon.stats()["quality_floor_overloaded"] and time.monotonic() < deadline:
            ratios_seen.add(daemon.stats()["downsample_ratio"])
            time.sleep(0.05)
        stats = daemon.stats()
        frames_then = len(sink.frames)
        while len(sink.frames) < frames_then + 10 and time.monotonic() < deadline:
            time.sleep(0.05)  # still delivering at the floor
    finally:
        daemon.stop()
        daemon.wait(10)
        daemon.close()
    floor = ladder_ratios(360, 640, 0.75)[-1]
    assert stats["quality_floor_overloaded"] is True and stats["downsample_ratio"] == floor
    assert min(r for r in ratios_seen if r is not None) >= floor  # never below the floor on the way
    assert len(sink.frames) >= frames_then + 10 and stats["frames_dropped"] > 0
    assert "quality: at the floor (downsample 0.4)" in caplog.text and "dropping frames" in caplog.text
