"""A bounded queue with an explicit overflow policy; the only boundary between pipeline threads."""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Empty(Exception):
    """Raised by ``get`` when nothing arrived before the timeout."""


class FrameQueue(Generic[T]):
    """Bounded FIFO. ``leaky=True`` drops the oldest item when full (live sources: always process the
    freshest frame); ``leaky=False`` makes ``put`` block (files: no frame is lost). Drops are counted."""

    def __init__(self, maxsize: int = 2, *, leaky: bool = False, name: str = "queue") -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"queue maxsize must be a positive int, got {maxsize!r}")
        self.maxsize = maxsize
        self.leaky = leaky
        self.name = name
        self.dropped = 0
        self.put_count = 0
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put(self, item: T, timeout: float | None = None, *, force: bool = False) -> bool:
        """Enqueue ``item``. Returns False if a blocking queue stayed full for ``timeout`` seconds.

        ``force`` enqueues even past ``maxsize`` (used for the end-of-stream sentinel, which must never
        be dropped or block shutdown)."""
        with self._lock:
            if not force:
                if self.leaky:
                    while len(self._items) >= self.maxsize:
                        self._items.popleft()
                        self.dropped += 1
                elif not self._not_full.wait_for(lambda: len(self._items) < self.maxsize, timeout):
                    return False
            self._items.append(item)
            self.put_count += 1
            self._not_empty.notify()
            return True

    def get(self, timeout: float | None = None) -> T:
        """Dequeue the oldest item, waiting up to ``timeout`` seconds; raises ``Empty`` on timeout."""
        with self._lock:
            if not self._not_empty.wait_for(lambda: len(self._items) > 0, timeout):
                raise Empty(self.name)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
