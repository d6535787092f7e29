"""The adaptive-quality governor: a ladder per frame size, down when slow, up only with headroom, hysteresis."""

from __future__ import annotations

import pytest

from rvm_live.governor import Governor, ladder_ratios


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
