"""What the control API and the web page drive: the ``Controller`` protocol, and a small base class for
controllers with one stream (tests, embedding). The daemon (``runtime/daemon.py``) implements the protocol.

Every member is required, so no route probes a controller with ``getattr``. ``stream`` is a stream id, or
``None`` for "the only stream" (a ``ValueError`` naming the streams when there are several).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stream(Protocol):
    """One stream as the routes see it: its id and its outputs (where the preview tap is found)."""

    id: str
    sinks: list[Any]


@runtime_checkable
class Controller(Protocol):
    """The daemon as the control API sees it."""

    def health(self, stream: str | None = None) -> dict[str, Any]:
        """``{"ok": bool, ...}``: ok false makes ``/health`` answer 503."""
        ...

    def stats(self, stream: str | None = None) -> dict[str, Any]:
        """The stats JSON of one stream, or totals plus ``streams: {id: stats}`` with several."""
        ...

    def streams(self) -> list[dict[str, Any]]:
        """One entry per stream, each with at least its ``id``."""
        ...

    def session(self, stream: str | None = None) -> Stream:
        """The stream named ``stream`` (KeyError for an unknown id)."""
        ...

    def set_background(self, spec: str, stream: str | None = None) -> None:
        """Swap a stream's background; bad specs raise ValueError or MediaError."""
        ...

    def pause(self, stream: str | None = None) -> None:
        """Let a stream's (or every stream's) frames pass unmatted."""
        ...

    def resume(self, stream: str | None = None) -> None:
        """Matte again after ``pause``."""
        ...

    def reset(self, stream: str | None = None) -> None:
        """Forget a stream's (or every stream's) recurrent state."""
        ...


class OneStream:
    """The only stream of a :class:`ControllerBase`."""

    def __init__(self, stream_id: str, sinks: list[Any]) -> None:
        self.id, self.sinks = stream_id, sinks


class ControllerBase:
    """A controller of one stream, named ``stream_id``, whose outputs are ``self.outputs``: subclasses write
    ``health``, ``stats``, ``set_background``, ``pause``, ``resume`` and ``reset`` for that stream."""

    stream_id = "0"

    def __init__(self, outputs: list[Any] | None = None) -> None:
        self.outputs: list[Any] = outputs if outputs is not None else []

    def session(self, stream: str | None = None) -> Stream:
        """The one stream; KeyError for any other id."""
        if stream is not None and stream != self.stream_id:
            raise KeyError(f"no such stream: {stream!r} (streams: {self.stream_id})")
        return OneStream(self.stream_id, self.outputs)

    def streams(self) -> list[dict[str, Any]]:
        """The one stream's id and its health."""
        return [{"id": self.stream_id, **self.health()}]

    def health(self, stream: str | None = None) -> dict[str, Any]:
        """Healthy unless a subclass says otherwise."""
        return {"ok": True}

    def stats(self, stream: str | None = None) -> dict[str, Any]:  # pragma: no cover - subclasses answer
        raise NotImplementedError

    def set_background(self, spec: str, stream: str | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def pause(self, stream: str | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def resume(self, stream: str | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def reset(self, stream: str | None = None) -> None:  # pragma: no cover
        raise NotImplementedError
