"""Output files checked at start, before a model loads: each one writable, none written twice, none a source.

Without these checks a read-only folder failed only after the model loaded (naming an internal thread), two
streams writing one file left one stream's video silently gone, and an output that was its own source replaced
the source when the run ended.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError, SinkError
from .sinks.base import sink_key
from .sources.base import source_key


def _path(spec: str) -> Path:
    target = spec[len("file://") :] if spec.lower().startswith("file://") else spec
    return Path(target).expanduser().resolve()


def file_output(spec: str) -> Path | None:
    """The resolved path an output spec writes, or None when it is not a file (vcam, null, a stream URL)."""
    return _path(spec) if sink_key(spec) == "file" else None


def file_source(spec: str) -> Path | None:
    """The resolved path of a source that is a file on disk, or None (camera, demo, network URL)."""
    return _path(spec) if source_key(spec) == "file" else None


def same_file(a: Path, b: Path) -> bool:
    """Whether two resolved paths name one file: equal, or one inode (a hard link, a bind mount)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then they are not the same file
        return False


def check_writable_folder(path: Path) -> None:
    """SinkError naming ``path`` when its folder is missing or cannot take a new file (read-only, no permission).

    A real file is made and removed: permission bits say nothing for root, and only a write sees EROFS."""
    folder = path.parent
    if not folder.is_dir():
        raise SinkError(f"output {path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".rvm-live-", suffix=".probe")
    except OSError as exc:
        raise SinkError(f"output {path}: cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_files(streams: Iterable[tuple[str, str, Iterable[str]]]) -> None:
    """Check every stream's ``(id, source spec, output specs)`` before anything is opened or loaded.

    ConfigError when two outputs are one file or an output is a source (compared by path and by inode);
    SinkError when an output's folder cannot be written. Messages name the stream when there are several."""
    streams = [(sid, source, list(outputs)) for sid, source, outputs in streams]
    where = (lambda sid: f"stream {sid}: ") if len(streams) > 1 else (lambda sid: "")
    sources = [(sid, path) for sid, spec, _ in streams if (path := file_source(spec)) is not None]
    written: list[tuple[str, Path]] = []
    for sid, _, outputs in streams:
        for spec in outputs:
            path = file_output(spec)
            if path is None:
                continue
            for other_sid, source in sources:
                if same_file(path, source):
                    whose = "its own source" if other_sid == sid else f"stream {other_sid}'s source"
                    raise ConfigError(f"{where(sid)}output {spec}: is {whose} ({source}); it would be overwritten")
            for other_sid, earlier in written:
                if same_file(path, earlier):
                    whose = "this stream" if other_sid == sid else f"stream {other_sid}"
                    raise ConfigError(f"{where(sid)}output {spec}: {whose} already writes {earlier}; "
                                      "one of the videos would be lost")
            try:
                check_writable_folder(path)
            except SinkError as exc:
                raise SinkError(f"{where(sid)}{exc}") from None
            written.append((sid, path))
