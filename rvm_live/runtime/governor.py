"""The adaptive-quality governor: holds a live stream at its source's frame rate by choosing the network's
internal resolution (the downsample ratio) from a small ladder.

It watches the inference stage's time per frame against the source's frame interval (GStreamer's QoS idea:
the stage measures lateness, the element that can lower quality decides). It steps down when the stream
cannot keep up, or when frames would wait longer than the latency budget (several rungs at once when far
over, so a slow machine settles seconds after the start, not a rung per dwell later); it steps up only
with clear headroom at the rung above, one rung at a time, and it changes at most once per ``dwell_s``
(longer before stepping up), so quality never flickers; a climb is a trial, undone within a few frames if the
rung above turns out too slow. The ladder is of internal long sides in pixels, so
it means the same at any frame size; the top rung is RVM's own recommendation for that size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..bus import QualityChanged, QualityFloor

log = logging.getLogger(__name__)

# Internal long sides in px, best first, from the quality benchmark (BENCHMARKS.md, "Matting quality"):
# from 480 to 384 px MAD grows ~7 %, at 320 px ~30-40 %, and between 320 and 256-272 px it doubles, so the
# steps are finest there. 256 px is the QUALITY FLOOR: the last size that still beats MediaPipe's selfie
# segmentation on MAD, Grad and dtSSD at 360p and 720p; 192 and 160 px (the old bottom rungs) collapse (MAD
# 4-7x the top) and lose to it. Multiples of 16 (512x288, 256x144) measured no better than their neighbours.
LADDER_PX = (512, 448, 384, 352, 320, 288, 256)
QUALITY_FLOOR_PX = 256
MIN_INTERNAL_PX = 32
EWMA = 0.25  # weight of the newest step time in the running mean
WARMUP_STEPS = 5  # first steps after a change: caches and allocators settle, not counted
SETTLING_MAX_S = 3.0  # an engine that says it is still settling after this long is measured anyway
CALIBRATION_STEPS = 3  # a fresh governor's first decision: after this many measured steps, not a whole dwell
MEMORY_S = 30.0  # how long a rung's measured time is trusted (load from other programs comes and goes)
SETTLED_S = 10.0  # a rung held this long is remembered for the next start of the same kind of stream
MEMORY_ENV = "RVM_LIVE_GOVERNOR_MEMORY"  # where settled rungs are kept (a JSON file; empty: nowhere)
CALIBRATION_HEADROOM = 0.85  # a calibrated start leaves this much of the interval for what it did not time


def ladder_ratios(height: int, width: int, top_ratio: float, ladder_px: Sequence[int] = LADDER_PX,
                  floor_px: int = QUALITY_FLOOR_PX) -> list[float]:
    """Ratios for a frame size, best first: ``top_ratio`` (RVM's recommendation), then every ladder rung below
    it down to the quality floor (internal long side ``floor_px``; never under ``MIN_INTERNAL_PX`` on the short
    side). A frame whose top is already at or under the floor gets no lower rung."""
    long_side, short_side = max(height, width), min(height, width)
    ratios = [top_ratio]
    for px in ladder_px:
        r = round(px / long_side, 4)
        if px >= floor_px and r < ratios[-1] - 1e-6 and short_side * r >= MIN_INTERNAL_PX:
            ratios.append(r)
    return ratios


def calibrated_rung(ratios: Sequence[float], costs: dict[int, float], limit_ms: float,
                    headroom: float = CALIBRATION_HEADROOM) -> int:
    """The best rung a fresh stream can start at, from the network's time measured at some rungs before its first
    frame (``costs``: rung index -> ms; the top and the floor): the time is taken as ``fixed + k·ratio²`` (a
    straight line through the two points in the internal pixel count; one point: all of it scales), and the
    first rung predicted within ``headroom`` of ``limit_ms`` wins; the floor when none is."""
    if not costs:
        raise ValueError("calibrated_rung needs at least one measured rung")
    (i, ti), (j, tj) = (min(costs.items()), max(costs.items()))
    ri, rj = ratios[i] ** 2, ratios[j] ** 2
    if i == j or abs(ri - rj) < 1e-12:
        slope, fixed = ti / ri, 0.0
    else:  # measured noise can make the top look cheaper than the floor: then every rung costs the same
        slope = max(0.0, (ti - tj) / (ri - rj))
        fixed = ti - slope * ri
    for rung, ratio in enumerate(ratios):
        if fixed + slope * ratio ** 2 <= headroom * limit_ms:
            return rung
    return len(ratios) - 1


class RungMemory:
    """The ratio each kind of stream last settled on, on this machine (a small JSON file), so that the next
    start begins near it instead of spending seconds at a rung the machine cannot hold."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None

    @classmethod
    def default(cls) -> RungMemory:
        """``$RVM_LIVE_GOVERNOR_MEMORY`` (empty: off), else ``governor.json`` in the asset cache."""
        if MEMORY_ENV in os.environ:
            return cls(os.environ[MEMORY_ENV] or None)
        from ..assets import cache_dir

        return cls(cache_dir() / "governor.json")

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def recall(self, key: str) -> float | None:
        """The ratio remembered for ``key``, if any."""
        if self.path is None:
            return None
        value = self._load().get(key)
        return float(value) if isinstance(value, (int, float)) and 0 < value <= 1 else None

    def remember(self, key: str, ratio: float) -> None:
        """Keep ``ratio`` for ``key`` (atomically; a cache that cannot be written only costs the next start)."""
        if self.path is None:
            return
        data = self._load()
        data[key] = ratio
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("governor: cannot remember the settled rung in %s (%s)", self.path, exc)


class Governor:
    """Per stream. ``observe(step_ms, now)`` after every frame; returns the event to post (for ``stream_id``):
    ``QualityChanged`` when the ratio changes, ``QualityFloor`` when the floor cannot hold the rate (frames are
    then dropped by the live queue, never quality below the floor) and when it can again.

    ``interval_ms`` is the source's frame interval; ``budget_ms`` the latency budget (a step that alone
    exceeds it can never meet it). ``headroom`` is the fraction of the interval that the rung above must be
    predicted to fit in before the governor climbs to it; the prediction scales the whole time by the pixel
    count, although part of it (the full-resolution stage) does not grow with the ratio, so it errs high.
    ``memory``/``memory_key``: where the settled rung of this kind of stream is recalled from and kept."""

    def __init__(self, ratios: Sequence[float], *, interval_ms: float, budget_ms: float = 100.0,
                 dwell_s: float = 2.0, up_dwell_s: float = 5.0, headroom: float = 0.85, start: int = 0,
                 size: tuple[int, int] | None = None, stream_id: str | None = None,
                 memory: RungMemory | None = None, memory_key: str | None = None) -> None:
        if not ratios:
            raise ValueError("the ladder needs at least one ratio")
        self.ratios = list(ratios)
        self.memory, self.memory_key = memory, memory_key
        recalled = memory.recall(memory_key) if memory is not None and memory_key else None
        self.recalled = recalled is not None  # a start from memory: no calibration needed
        if recalled is not None:  # the rung nearest to what this kind of stream settled on last time
            start = min(range(len(self.ratios)), key=lambda i: abs(self.ratios[i] - recalled))
        self.rung = min(max(start, 0), len(self.ratios) - 1)
        self.interval_ms = interval_ms
        self.budget_ms = budget_ms
        self.dwell_s, self.up_dwell_s, self.headroom = dwell_s, up_dwell_s, headroom
        self.mean_ms: float | None = None
        # last settled time per rung, and when: a rung just found too slow is not retried at once
        self.cost_ms: dict[int, tuple[float, float]] = {}
        self._since: float | None = None  # time of the last change (or the first observation)
        self._skip = WARMUP_STEPS
        self._measured = 0  # steps counted since the last change
        self._calibrating = True  # the first decision comes after CALIBRATION_STEPS, not a whole dwell
        self._remembered = False  # this rung is in the memory already
        self.overloaded = False  # at the floor and still too slow: frames are being dropped
        self.size = size  # the frame size the ladder was made for
        self.stream_id = stream_id

    @property
    def ratio(self) -> float:
        return self.ratios[self.rung]

    def observe(self, step_ms: float, now: float, *, settling: bool = False) -> QualityChanged | QualityFloor | None:
        """Account one frame's inference time; maybe change rung (up: one at a time). ``settling``: the engine is
        still preparing for this rung (a compile on another thread), so the time is skipped like a warm-up step."""
        if self._since is None:
            self._since = now
        if self._skip > 0 or (settling and now - self._since < SETTLING_MAX_S):
            self._skip = max(0, self._skip - 1)
            return None
        self.mean_ms = step_ms if self.mean_ms is None else (1 - EWMA) * self.mean_ms + EWMA * step_ms
        self._measured += 1
        self.cost_ms[self.rung] = (self.mean_ms, now)
        held = now - self._since
        decided = held >= self.dwell_s or (self._calibrating and self._measured >= CALIBRATION_STEPS)
        # a frame must be done within one interval to hold the rate, and a queue of one frame must not wait
        # beyond the budget
        limit = self.limit_ms
        last = len(self.ratios) - 1
        if self.mean_ms > limit and decided and self.rung < last:
            # far over: straight down to the first rung that pixel-count scaling says could fit. That scaling
            # errs low going down (the full-res stage does not shrink), so the jump never overshoots, and the
            # next dwell takes the rest one rung at a time
            target = self.rung + 1
            while target < last and self.mean_ms * (self.ratios[target] / self.ratio) ** 2 > limit:
                target += 1
            return self._move(target - self.rung, now, f"{self.mean_ms:.0f} ms per frame > {limit:.0f} ms")
        # at the floor: say when it cannot hold the rate, and when it can again (with a margin, so it never chatters)
        over = self.mean_ms > limit * (0.9 if self.overloaded else 1)
        if self.rung == last and decided and over != self.overloaded:
            self.overloaded = not self.overloaded
            return QualityFloor(self.stream_id, self.overloaded, self.ratio, self.mean_ms, limit)
        if self.rung > 0 and held >= self.up_dwell_s:
            predicted = self._predict(self.rung - 1, now)
            if predicted <= self.headroom * limit:
                return self._move(-1, now, f"{predicted:.0f} ms predicted at the rung above")
        if held >= SETTLED_S and not self._remembered and self.memory is not None and self.memory_key:
            self._remembered = True
            self.memory.remember(self.memory_key, self.ratio)
        return None

    @property
    def limit_ms(self) -> float:
        """What one frame may take: the source's interval, or the latency budget if that is shorter."""
        return min(self.interval_ms, self.budget_ms)

    def calibrate(self, costs: dict[int, float]) -> QualityChanged | None:
        """Start at the rung that ``costs`` (ms per rung index, timed before the first frame) say fits: the
        change to post, if any. A cold start then never spends its first second far behind the source."""
        rung = calibrated_rung(self.ratios, costs, self.limit_ms)
        if rung == self.rung:
            return None
        timed = ", ".join(f"{ms:.0f} ms at {self.ratios[i]:.3g}" for i, ms in sorted(costs.items()))
        self.mean_ms = costs.get(self.rung)
        return self._move(rung - self.rung, None, f"calibrated: {timed}")

    def _predict(self, rung: int, now: float) -> float:
        """Time per frame at ``rung``: scaled from this rung's by the internal pixel count, or what was
        measured there within ``MEMORY_S`` if that is worse."""
        scaled = self.mean_ms * (self.ratios[rung] / self.ratio) ** 2
        known, when = self.cost_ms.get(rung, (0.0, -MEMORY_S))
        return max(scaled, known) if now - when < MEMORY_S else scaled

    def _move(self, delta: int, now: float | None, reason: str) -> QualityChanged:
        previous = self.ratio
        self.rung += delta
        self._since, self._skip, self._measured = now, WARMUP_STEPS, 0
        # the quick first decision (after CALIBRATION_STEPS, not a whole dwell) for a calibrated start (now None:
        # before the first frame) and for a climb: a rung above that turns out too slow (the prediction missed,
        # or load came back) is left in a third of a second, not after seconds of frames piling up
        self._calibrating = now is None or delta < 0
        self._remembered = False
        decision = QualityChanged(self.stream_id, self.ratio, previous, self.mean_ms or 0.0, reason)
        self.mean_ms = None
        return decision
