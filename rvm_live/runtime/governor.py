"""The adaptive-quality governor: holds a live stream at its source's frame rate by choosing the network's
internal resolution (the downsample ratio) from a small ladder.

It watches the inference stage's time per frame against the source's frame interval (GStreamer's QoS idea:
the stage measures lateness, the element that can lower quality decides). It steps down when the stream
cannot keep up, or when frames would wait longer than the latency budget (several rungs at once when far
over, so a slow machine settles seconds after the start, not a rung per dwell later); it steps up only
with clear headroom at the rung above, one rung at a time, and it changes at most once per ``dwell_s``
(longer before stepping up), so quality never flickers. The ladder is of internal long sides in pixels, so
it means the same at any frame size; the top rung is RVM's own recommendation for that size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..bus import QualityChanged

log = logging.getLogger(__name__)

LADDER_PX = (512, 448, 384, 320, 256, 192, 160)  # internal long side, best first
MIN_INTERNAL_PX = 32
EWMA = 0.25  # weight of the newest step time in the running mean
WARMUP_STEPS = 5  # first steps after a change: caches and allocators settle, not counted
MEMORY_S = 30.0  # how long a rung's measured time is trusted (load from other programs comes and goes)


def ladder_ratios(height: int, width: int, top_ratio: float, ladder_px: Sequence[int] = LADDER_PX) -> list[float]:
    """Ratios for a frame size, best first: ``top_ratio`` (RVM's recommendation), then every ladder rung
    below it that keeps the internal image at least ``MIN_INTERNAL_PX`` on its short side."""
    long_side, short_side = max(height, width), min(height, width)
    ratios = [top_ratio]
    for px in ladder_px:
        r = round(px / long_side, 4)
        if r < ratios[-1] - 1e-6 and short_side * r >= MIN_INTERNAL_PX:
            ratios.append(r)
    return ratios


class Governor:
    """Per stream. ``observe(step_ms, now)`` after every frame; returns the ``QualityChanged`` event to post (for
    ``stream_id``) when the ratio changes.

    ``interval_ms`` is the source's frame interval; ``budget_ms`` the latency budget (a step that alone
    exceeds it can never meet it). ``headroom`` is the fraction of the interval that the rung above must be
    predicted to fit in before the governor climbs to it; the prediction scales the whole time by the pixel
    count, although part of it (the full-resolution stage) does not grow with the ratio, so it errs high."""

    def __init__(self, ratios: Sequence[float], *, interval_ms: float, budget_ms: float = 100.0,
                 dwell_s: float = 2.0, up_dwell_s: float = 5.0, headroom: float = 0.85, start: int = 0,
                 size: tuple[int, int] | None = None, stream_id: str | None = None) -> None:
        if not ratios:
            raise ValueError("the ladder needs at least one ratio")
        self.ratios = list(ratios)
        self.rung = min(max(start, 0), len(self.ratios) - 1)
        self.interval_ms = interval_ms
        self.budget_ms = budget_ms
        self.dwell_s, self.up_dwell_s, self.headroom = dwell_s, up_dwell_s, headroom
        self.mean_ms: float | None = None
        # last settled time per rung, and when: a rung just found too slow is not retried at once
        self.cost_ms: dict[int, tuple[float, float]] = {}
        self._since: float | None = None  # time of the last change (or the first observation)
        self._skip = WARMUP_STEPS
        self.size = size  # the frame size the ladder was made for
        self.stream_id = stream_id

    @property
    def ratio(self) -> float:
        return self.ratios[self.rung]

    def observe(self, step_ms: float, now: float) -> QualityChanged | None:
        """Account one frame's inference time; maybe change rung (up: one at a time)."""
        if self._since is None:
            self._since = now
        if self._skip > 0:
            self._skip -= 1
            return None
        self.mean_ms = step_ms if self.mean_ms is None else (1 - EWMA) * self.mean_ms + EWMA * step_ms
        self.cost_ms[self.rung] = (self.mean_ms, now)
        held = now - self._since
        # a frame must be done within one interval to hold the rate, and a queue of one frame must not wait
        # beyond the budget
        limit = min(self.interval_ms, self.budget_ms)
        last = len(self.ratios) - 1
        if self.mean_ms > limit and held >= self.dwell_s and self.rung < last:
            # far over: straight down to the first rung that pixel-count scaling says could fit. That scaling
            # errs low going down (the full-res stage does not shrink), so the jump never overshoots, and the
            # next dwell takes the rest one rung at a time
            target = self.rung + 1
            while target < last and self.mean_ms * (self.ratios[target] / self.ratio) ** 2 > limit:
                target += 1
            return self._move(target - self.rung, now, f"{self.mean_ms:.0f} ms per frame > {limit:.0f} ms")
        if self.rung > 0 and held >= self.up_dwell_s:
            predicted = self._predict(self.rung - 1, now)
            if predicted <= self.headroom * limit:
                return self._move(-1, now, f"{predicted:.0f} ms predicted at the rung above")
        return None

    def _predict(self, rung: int, now: float) -> float:
        """Time per frame at ``rung``: scaled from this rung's by the internal pixel count, or what was
        measured there within ``MEMORY_S`` if that is worse."""
        scaled = self.mean_ms * (self.ratios[rung] / self.ratio) ** 2
        known, when = self.cost_ms.get(rung, (0.0, -MEMORY_S))
        return max(scaled, known) if now - when < MEMORY_S else scaled

    def _move(self, delta: int, now: float, reason: str) -> QualityChanged:
        previous = self.ratio
        self.rung += delta
        self._since, self._skip = now, WARMUP_STEPS
        decision = QualityChanged(self.stream_id, self.ratio, previous, self.mean_ms or 0.0, reason)
        self.mean_ms = None
        return decision
