"""Delivery counters, cheap to bump from any thread and to read as a snapshot."""

from __future__ import annotations

import itertools
import threading
from typing import Callable, Dict


class Counters:
    """Monotonic counters. ``enqueued`` is bumped on the logging hot path, so it is an
    ``itertools.count`` (atomic, lock-free); the rest move on the sender's threads under a lock."""

    FIELDS = ("sent", "retried", "failed", "dropped", "outboxed", "adopted")

    def __init__(self) -> None:
        self._enqueued = itertools.count()
        self.bump_enqueued: Callable[[], int] = self._enqueued.__next__
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    @property
    def enqueued(self) -> int:
        # itertools.count has no public read; its repr is "count(N)" in every Python version.
        return int(repr(self._enqueued)[6:-1])

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            values = dict(self._values)
        values["enqueued"] = self.enqueued
        return values
