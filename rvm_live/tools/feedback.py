"""What a benchmark tells its user while it runs: progress lines on stderr, and whether the machine is loaded.

A benchmark on a busy machine measures the other programs as much as ours, so its report says so. The load
average counts runnable threads, ours included once the benchmark runs, so it is compared with the cores
before we start and, at the end, after taking away the cores we used ourselves.
"""

from __future__ import annotations

import os
import sys
from typing import Any

BUSY_FRACTION = 0.5  # another program taking half the cores already halves a CPU benchmark's figures


def progress(message: str) -> None:
    """One progress line on stderr (stdout keeps the report, or the JSON)."""
    sys.stderr.write(f"rvm-live bench: {message}\n")
    sys.stderr.flush()


def load_average() -> float | None:
    """The 1-minute load average, where the OS has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_report(before: float | None, after: float | None, *, own_cores: float = 0.0) -> dict[str, Any]:
    """``{"before", "after", "cores", "busy"}``: ``busy`` when other programs kept more than ``BUSY_FRACTION``
    of the cores busy before or during the run (``own_cores``: what this benchmark used, taken out of
    ``after``)."""
    cores = os.cpu_count() or 1
    others = [x for x in (before, None if after is None else after - own_cores) if x is not None]
    return {"before": None if before is None else round(before, 2), "after": None if after is None else round(after, 2),
            "cores": cores, "busy": any(x > BUSY_FRACTION * cores for x in others)}


def load_warning(load: dict[str, Any]) -> str | None:
    """The report's warning line for a loaded machine, or None."""
    if not load.get("busy"):
        return None
    return (f"warning: the machine was busy (load average {load['before']} before, {load['after']} after, on "
            f"{load['cores']} cores): these figures are lower and noisier than on a quiet machine")

