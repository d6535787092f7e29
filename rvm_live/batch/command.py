"""``rvm-live batch INPUT... -o OUTDIR [--ray auto|ADDRESS] [--segment S] [any daemon flag]``.

The daemon's own parser with the batch arguments added, so every output flag (``--bg``, ``--crf``,
``--backbone``, ``--fp16``, ``--config PRESET``, ...) means exactly what it means for one clip.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..errors import ConfigError, RvmLiveError, one_line
from .job import DEFAULT_WARMUP, SUMMARY_NAME, JobOptions, run_job

log = logging.getLogger(__name__)

OUTPUT_EXTS = (".mp4", ".mov", ".mkv", ".webm")
# daemon settings that name one source, one run or a live service: meaningless for a library of clips
NOT_FOR_BATCH = ("source", "control", "control_token", "control_token_file", "stats_json", "loop", "realtime")
BATCH_KEYS = ("inputs", "suffix", "ext", "segment", "warmup", "workers", "ray", "retries", "summary")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The daemon's parser plus the batch arguments; ``-o`` is the output folder here."""
    from ..cli import build_parser as daemon_parser

    p = daemon_parser()
    p.prog = "rvm-live batch"
    p.description = ("Matte a library of clips: files, folders (recursively) or globs in, the same relative names "
                     "out under -o OUTDIR. Any daemon flag applies to every clip.")
    b = p.add_argument_group("batch")
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or globs")
    b.add_argument("--suffix", help="added to each output's name (default none)")
    b.add_argument("--ext", choices=OUTPUT_EXTS, help="output container (default .mp4; .mov with --bg transparent)")
    b.add_argument("--segment", type=_positive(float), metavar="SECONDS",
                   help="split clips longer than this into segments matted in parallel, joined losslessly")
    b.add_argument("--warmup", type=int, metavar="FRAMES",
                   help=f"frames each segment starts early to settle its recurrent state (default {DEFAULT_WARMUP})")
    b.add_argument("--workers", type=_positive(int), metavar="N",
                   help="workers (default: one per GPU, else one per two CPU cores)")
    b.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run on Ray Data: auto (a running cluster, else one started here) or a cluster address")
    b.add_argument("--retries", type=int, metavar="N", help="retries of a task whose worker dies (default 3)")
    b.add_argument("--summary", metavar="PATH", help=f"the JSON summary (default OUTDIR/{SUMMARY_NAME})")
    return p


def parse(argv: list[str]) -> tuple[Any, JobOptions]:
    """``(ConfigSource, JobOptions)`` from ``argv``; ConfigError names a bad or inapplicable flag."""
    from ..cli import ConfigSource

    source = ConfigSource(argv, parser=build_parser())
    flags = source.flags
    batch = {key: flags.pop(key) for key in BATCH_KEYS if key in flags}
    outputs = flags.pop("outputs", ())
    if len(outputs) != 1:
        raise ConfigError("batch: give exactly one output folder with -o OUTDIR")
    wrong = [key for key in NOT_FOR_BATCH if key in flags]
    if wrong:
        raise ConfigError(f"batch: --{wrong[0].replace('_', '-')} does not apply to a batch of clips")
    if batch.get("warmup", 0) < 0 or batch.get("retries", 0) < 0:
        raise ConfigError("batch: --warmup and --retries must be 0 or more")
    transparent = str(flags.get("bg", "")).lower() == "transparent"
    options = JobOptions(inputs=tuple(batch.pop("inputs")), outdir=outputs[0], quiet=source.quiet,
                         ext=batch.pop("ext", ".mov" if transparent else ".mp4"), suffix=batch.pop("suffix", ""),
                         **batch)
    return source, options


def main(argv: list[str]) -> int:
    """Run the batch; exit 0 when every clip is done or skipped, 1 when any failed (the summary says why)."""
    from ..cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, _fail, _setup_logging

    try:
        source, options = parse(argv)
        config = source.load()
    except RvmLiveError as exc:
        return _fail(str(exc), EXIT_USAGE)
    _setup_logging(config.log_level)
    try:
        summary = run_job(config, options, show_progress=None if options.quiet else _progress)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted (run the same command again to resume)", EXIT_INTERRUPTED)
    except (RvmLiveError, OSError, ValueError, RuntimeError) as exc:  # e.g. no Ray cluster at that address
        return _fail(f"batch: {one_line(exc)}")
    for record in summary["results"]:
        if record["status"] == "failed":
            error = record["error"]
            print(f"rvm-live: batch: {error if record['source'] in error else record['source'] + ': ' + error}",
                  file=sys.stderr)
    print(f"rvm-live: batch: {summary['clips']} clips: {summary['done']} done, {summary['skipped']} skipped, "
          f"{summary['failed']} failed; summary in {options.summary or options.outdir + '/' + SUMMARY_NAME}",
          file=sys.stderr)
    return EXIT_FAILED if summary["failed"] else EXIT_OK


def _progress(stats: Any, *, total: int | None) -> Any:
    """The project's progress bar (frames of every clip, with an ETA), on a terminal only."""
    from ..progress import Progress

    if not sys.stderr.isatty():
        return None
    return Progress(stats, live=False, total=total).start()
