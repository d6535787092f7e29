"""Exception hierarchy: each error also inherits the built-in a caller would naturally catch."""

from __future__ import annotations


class RvmLiveError(Exception):
    """Base class of every error raised on purpose by rvm-live."""


class ConfigError(RvmLiveError, ValueError):
    """A bad flag, preset key or value."""


class WeightsError(RvmLiveError, OSError):
    """Model weights could not be found, fetched or verified."""


class MediaError(RvmLiveError, OSError):
    """A media file or stream could not be opened, decoded or encoded."""


class SourceError(MediaError):
    """A capture source could not be opened or stopped delivering frames."""


class SourceNotReady(SourceError):
    """A live network source that is not up (yet): worth waiting for, unlike a typo or a missing file."""


class SinkError(MediaError):
    """An output could not be opened or refused a frame."""


class VirtualCameraError(SinkError):
    """No usable virtual camera device; the message carries the exact fix."""


class PipelineError(RvmLiveError, RuntimeError):
    """A worker thread failed; the original exception is the ``__cause__``, ``stream_id`` the stream whose
    stage failed (None for the shared inference stage)."""

    def __init__(self, message: str, *, stream_id: str | None = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id


def one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line (FFmpeg's messages span several), or its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__
