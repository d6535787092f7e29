"""Uploaded background pictures on disk: one private folder per server, holding only the latest upload, and
removed when the server closes (the CLI closes it before it leaves with ``os._exit``, which would skip a
``TemporaryDirectory``'s own clean-up) or when a failed upload leaves it empty."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

PREFIX = "rvm-live-upload-"


class Uploads:
    """The folder is made at the first upload (mode 0700, by ``mkdtemp``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._count = 0
        self._latest: Path | None = None

    def save(self, data: bytes, suffix: str) -> Path:
        """Write one upload; the previous one goes (the background decoded its file when it was set)."""
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix=PREFIX))
            self._count += 1
            path = self._dir / f"background-{self._count}{suffix}"
            path.write_bytes(data)
            previous, self._latest = self._latest, path
        if previous is not None:
            previous.unlink(missing_ok=True)
        return path

    def discard(self, path: Path) -> None:
        """Remove an upload that was refused, and the folder with it when nothing else is left."""
        with self._lock:
            path.unlink(missing_ok=True)
            if self._latest == path:
                self._latest = None
            if self._latest is None and self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def close(self) -> None:
        """Remove the folder and everything in it (idempotent)."""
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir, self._latest = None, None
