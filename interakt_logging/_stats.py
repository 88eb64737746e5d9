"""Delivery counters, cheap to bump from any thread and to read as a snapshot."""

from __future__ import annotations

import collections
import itertools
from typing import Callable, Dict


class Counters:
    """Monotonic counters without a lock: each is an ``itertools.count``, whose ``next()`` is
    one C call under the GIL, so atomic between threads. A lock would deadlock when a signal
    handler that logs interrupts a bump on the same thread and reports (counts) in turn."""

    FIELDS = ("sent", "retried", "throttled", "failed", "dropped", "outboxed", "adopted")

    def __init__(self) -> None:
        self._counts = {name: itertools.count() for name in ("enqueued", *self.FIELDS)}
        # bound once: bumped on the logging hot path
        self.bump_enqueued: Callable[[], int] = self._counts["enqueued"].__next__

    def add(self, name: str, n: int = 1) -> None:
        counter = self._counts[name]
        if n == 1:
            next(counter)
        else:  # n separate atomic steps: the total stays exact whatever interleaves
            collections.deque(itertools.islice(counter, n), maxlen=0)

    @property
    def enqueued(self) -> int:
        return _value(self._counts["enqueued"])

    def snapshot(self) -> Dict[str, int]:
        values = {name: _value(self._counts[name]) for name in self.FIELDS}
        values["enqueued"] = self.enqueued
        return values


def _value(counter: itertools.count[int]) -> int:
    # itertools.count has no public read; its repr is "count(N)" in every Python version.
    return int(repr(counter)[6:-1])
