"""How long to wait between attempts to reach a lost source or output again."""

from __future__ import annotations

from collections.abc import Iterator

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 5.0


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S) -> Iterator[float]:
    """0.25, 0.5, 1, 2, 4, 5, 5, ... seconds: capped exponential backoff, endless."""
    delay = start
    while True:
        yield delay
        delay = min(delay * 2, cap)
