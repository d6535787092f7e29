"""What a batch job will do: the clips its inputs name, where each one's output goes, which are finished
already (resume), and which long clips are split into segments.

Everything here runs in the job's own process before any worker starts; it reads file headers only.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..compositing.backgrounds import VIDEO_SUFFIXES
from ..errors import ConfigError
from ..io._av import av

log = logging.getLogger(__name__)

INPUT_SUFFIXES = VIDEO_SUFFIXES | {".mpg", ".mpeg", ".mts", ".m2ts", ".flv", ".wmv", ".3gp"}
WORK_DIR = ".rvm-batch"  # inside OUTDIR: segment outputs waiting to be joined


@dataclass(frozen=True)
class Clip:
    """One input file and the output it becomes (``relative``: the output's name under OUTDIR)."""

    source: str
    relative: str
    output: str


@dataclass(frozen=True)
class Window:
    """The part of a clip one segment mattes, in the clip's own timestamps (seconds).

    Frames from ``warm_start`` on are matted; those before ``start`` only warm the recurrent state up and
    are dropped. ``None`` means the clip's beginning (``warm_start``, ``start``) or its end (``end``)."""

    index: int
    count: int
    warm_start: float | None
    start: float | None
    end: float | None
    warmup_frames: int


@dataclass(frozen=True)
class Task:
    """One unit of work for a worker: a whole clip, or one segment of a long one."""

    key: str
    clip: Clip
    output: str  # the clip's output, or the segment's file under OUTDIR/.rvm-batch/
    frames: int  # expected frames written (the progress bar's share); 0 when the header does not say
    window: Window | None = None


@dataclass(frozen=True)
class Probe:
    """What a clip's header says: frame count, rate and first timestamp (0 / None when it does not say)."""

    frames: int
    fps: float | None
    start: float


def probe(path: str) -> Probe:
    """Frame count, frame rate and start time from the header; a file that does not open gives zeros (the
    worker then fails it with the real reason)."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            frames = int(stream.frames or 0)
            if not frames and stream.duration and fps:
                frames = round(float(stream.duration * stream.time_base) * fps)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            return Probe(frames, fps, start)
    except (av.FFmpegError, OSError, IndexError, UnicodeDecodeError, ValueError) as exc:
        log.debug("no header for %s: %s", path, exc)
        return Probe(0, None, 0.0)


def expand_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """``(file, relative name)`` for every file, folder (recursively, video suffixes only) or glob in
    ``inputs``; ConfigError names an input that matches nothing."""
    found: list[tuple[Path, str]] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
                           and WORK_DIR not in p.parts)
            found += [(p, p.relative_to(path).as_posix()) for p in files]
        elif path.is_file():
            found.append((path, path.name))
        elif glob.has_magic(spec):
            base = _glob_base(spec)
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            found += [(p, p.relative_to(base).as_posix()) for p in files]
            if not files:
                raise ConfigError(f"input {spec!r}: no file matches")
        else:
            raise ConfigError(f"input {spec!r}: no such file or folder")
    return found


def _glob_base(pattern: str) -> Path:
    """The folder a glob's matches are named relative to: its leading parts without wildcards."""
    parts = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def output_name(relative: str, *, suffix: str, ext: str) -> str:
    """``a/b.mp4`` -> ``a/b{suffix}{ext}``: the same relative name, with the output's own suffix."""
    path = Path(relative)
    return path.with_name(f"{path.stem}{suffix}{ext}").as_posix()


def plan_clips(inputs: list[str], outdir: str, *, suffix: str, ext: str) -> list[Clip]:
    """The clips of ``inputs`` with their outputs under ``outdir``; two inputs that would write the same
    output are a ConfigError naming both."""
    clips: dict[str, Clip] = {}
    for path, relative in expand_inputs(inputs):
        name = output_name(relative, suffix=suffix, ext=ext)
        output = str(Path(outdir) / name)
        if name in clips:
            if Path(clips[name].source).resolve() == path.resolve():
                continue  # named twice (a folder and a glob over it): one clip
            raise ConfigError(f"inputs {clips[name].source} and {path} would both write {output}")
        clips[name] = Clip(str(path), name, output)
    return list(clips.values())


def segment_frames(seconds: float, fps: float) -> int:
    """Frames per segment for ``--segment SECONDS`` at ``fps`` (at least one)."""
    return max(1, round(seconds * fps))


def boundary(info: Probe, index: float) -> float:
    """The timestamp (seconds) half a frame before frame ``index`` of a clip with rate ``info.fps``: a segment
    boundary there puts every frame in exactly one segment whatever rounding its timestamp had."""
    assert info.fps  # callers split only clips whose header gives a rate
    return info.start + (index - 0.5) / info.fps


def windows(info: Probe, length: int, warmup: int) -> list[Window]:
    """The segments of a clip of ``info.frames`` frames: ``length`` frames each (the last takes the rest),
    each starting ``warmup`` frames early. Boundaries sit half a frame before a frame's timestamp, so every
    frame falls in exactly one segment whatever rounding its timestamp had."""
    if not info.fps or info.frames <= 0:
        return []
    count = max(1, round(info.frames / length))
    if count == 1:
        return []

    at = functools.partial(boundary, info)
    result = []
    for k in range(count):
        first = k * length
        warm = min(warmup, first)
        result.append(Window(k, count, at(first - warm) if k else None, at(first) if k else None,
                             at(first + length) if k < count - 1 else None, warm))
    return result


def plan_tasks(clips: list[Clip], outdir: str, *, segment_s: float | None, warmup: int) -> list[Task]:
    """One task per clip, or one per segment of a clip longer than ``segment_s`` seconds; longest first,
    so a long clip does not start last and hold the whole job up."""
    tasks: list[Task] = []
    for clip in clips:
        info = probe(clip.source)
        length = segment_frames(segment_s, info.fps) if segment_s and info.fps else 0
        parts = windows(info, length, warmup) if length else []
        if not parts:
            tasks.append(Task(clip.relative, clip, clip.output, info.frames))
            continue
        for w in parts:
            frames = length if w.index < w.count - 1 else info.frames - length * (w.count - 1)
            tasks.append(Task(f"{clip.relative}#{w.index}", clip, segment_path(outdir, clip, w), frames, w))
    return sorted(tasks, key=lambda t: -t.frames)


def segment_path(outdir: str, clip: Clip, window: Window) -> str:
    """Where segment ``window`` of ``clip`` is written before the join (the output's own suffix, so the
    join is a stream copy into the same container format)."""
    name = Path(clip.relative)
    digits = max(4, math.ceil(math.log10(window.count + 1)))
    return str(Path(outdir) / WORK_DIR / name.parent / name.stem / f"part{window.index:0{digits}d}{name.suffix}")
