"""Soak test: run the daemon for N minutes and report resident memory (and GPU memory) over time.

``python -m rvm_live.tools.soak --minutes 10 --json soak.json``. Growth is measured from the end of warm-up
(the first fifth of the run, at least 10 s) to the end; it should stay within a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from typing import Any

import torch

from ..config import Config
from ..runtime.daemon import Daemon


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; elsewhere the peak, which can only grow)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def gpu_mib() -> float | None:
    """CUDA memory held by PyTorch's allocator in MiB, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_reserved() / 2**20


def soak(seconds: float, *, config: Config | None = None, interval: float = 2.0) -> dict[str, Any]:
    """Run the daemon for ``seconds`` (the demo clip looped, as fast as it goes, to a null sink)."""
    config = config or Config(source="demo", loop=True, outputs=("null",))
    daemon = Daemon(config)
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    timer = threading.Timer(seconds, daemon.stop)
    daemon.start()
    timer.start()
    try:
        while not daemon.wait(timeout=interval):
            stats = daemon.stats()
            samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mib": round(rss_mib(), 1),
                            "gpu_mib": gpu_mib(), "frames_out": stats["frames_out"]})
    finally:
        timer.cancel()
        daemon.close()
    warm_t = max(10.0, seconds / 5)
    warm = [s for s in samples if s["t_s"] >= warm_t]
    growth = None
    if len(warm) >= 2:
        growth = round(100 * (warm[-1]["rss_mib"] - warm[0]["rss_mib"]) / warm[0]["rss_mib"], 2)
    return {"seconds": seconds, "warmup_s": warm_t, "rss_growth_pct_after_warmup": growth,
            "stats": daemon.stats(), "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rvm_live.tools.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=None, help="how long (default 5, or 10 with --chaos)")
    p.add_argument("--seconds", type=float, default=None, help="how long, in seconds")
    p.add_argument("--chaos", action="store_true",
                   help="run the daemon under a cycle of faults (see rvm_live.tools.chaos) instead of a plain soak")
    p.add_argument("--faults", metavar="KIND,...", help="with --chaos: only these fault kinds, in turn (one of them "
                   "many times, say, to see what it costs)")
    p.add_argument("--source", default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="PATH", help="write the full report here")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or (10.0 if args.chaos else 5.0))
    if args.chaos:
        from .chaos import chaos

        kinds = args.faults.split(",") if args.faults else None
        try:
            report = chaos(seconds, progress=print, kinds=kinds)
        except ValueError as exc:
            p.error(str(exc))
        _print_chaos(report)
        code = 0 if report["all_survived"] and report["exit_code"] == 0 else 1
    else:
        config = Config(source=args.source, loop=True, outputs=("null",), device=args.device)
        report = soak(seconds, config=config)
        for s in report["samples"]:
            gpu = f"  gpu {s['gpu_mib']:.0f} MiB" if s["gpu_mib"] is not None else ""
            print(f"{s['t_s']:7.1f} s  rss {s['rss_mib']:8.1f} MiB{gpu}  frames {s['frames_out']}")
        print(f"RSS growth after warm-up ({report['warmup_s']:.0f} s): {report['rss_growth_pct_after_warmup']} %")
        code = 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return code


def _print_chaos(report: dict[str, Any]) -> None:
    for name, count in report["faults"].items():
        print(f"{name:16s} injected {count['injected']:4d}  survived {count['survived']:4d}")
    print(f"frames in {report['frames_in']}, out {report['frames_out']}; RSS max {report['rss_mib_max']} MiB, "
          f"growth after warm-up {report['rss_growth_pct_after_warmup']} %; SIGTERM to exit "
          f"{report['sigterm_to_exit_s']} s, exit code {report['exit_code']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
