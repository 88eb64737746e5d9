"""The backlog: payloads the listener has drained and the workers have not finished.

It tracks both the payloads waiting for a worker and those in flight, so it can answer "is
everything up to sequence number N finished?", which is what ``flush`` waits for. The in-memory
backlog here is the default; the outbox backlog keeps the same contract on disk.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from typing import Deque, Dict, List, Optional, Set, Tuple

from ._payload import Payload


class FlushMarker:
    """Put on the queue by ``flush``; set once everything queued before it is finished."""

    __slots__ = ("done", "finished", "seq")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.finished = False  # False when released by shutdown rather than by progress
        self.seq = 0


class MemoryBacklog:
    """Waiting payloads in a deque, in-flight ones in a dict, flush markers in a list.

    ``room`` bounds the waiting part, so the listener stops draining the queue while the
    workers are behind: memory stays bounded by ``max_queue_size + room + workers``.
    """

    def __init__(self, room: int) -> None:
        self._room = room
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._waiting: Deque[Payload] = collections.deque()
        self._in_flight: Dict[int, Payload] = {}
        self._settling: Set[int] = set()  # in flight, outcome being counted and reported
        self._retries: List[Tuple[float, int, Payload]] = []  # (due, seq, payload), a heap
        self._markers: List[FlushMarker] = []
        self._last_seq = 0
        self._stopping = False

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def put_batch(self, payloads: List[Payload]) -> List[Payload]:
        """Take over a drained batch; returns the payloads that could not be kept (none here)."""
        with self._lock:
            for payload in payloads:
                self._last_seq += 1
                payload.seq = self._last_seq
            self._waiting.extend(payloads)
            self._has_work.notify(len(payloads))
        return []

    def wait_for_room(self, timeout: float) -> bool:
        with self._lock:
            if len(self._waiting) < self._room:
                return True
            self._has_room.wait(timeout)
            return len(self._waiting) < self._room

    def take(self, timeout: float) -> Optional[Payload]:
        """A retry that is due, else the oldest waiting payload (now in flight); None after
        ``timeout`` or when stopping."""
        with self._lock:
            deadline = time.monotonic() + timeout
            while not self._stopping:
                now = time.monotonic()
                if self._retries and self._retries[0][0] <= now:
                    return heapq.heappop(self._retries)[2]
                if self._waiting:
                    payload = self._waiting.popleft()
                    self._in_flight[id(payload)] = payload
                    if len(self._waiting) < self._room:
                        self._has_room.notify()
                    return payload
                wait = deadline - now
                if self._retries:
                    wait = min(wait, self._retries[0][0] - now)
                if wait <= 0:
                    return None
                self._has_work.wait(wait)
            return None

    def retry_later(self, payload: Payload, delay: float) -> None:
        """Hand an in-flight payload back for another attempt after ``delay`` seconds; the
        worker is free meanwhile, and flush still waits for it."""
        with self._lock:
            heapq.heappush(self._retries, (time.monotonic() + delay, payload.seq, payload))
            self._has_work.notify()

    def begin_settle(self, payload: Payload) -> bool:
        """A worker is about to count and report ``payload``'s outcome, then ``finish`` it:
        from now on shutdown leaves it to the worker. False when shutdown already took it over
        (reported or kept it), so the worker must not count or report it again."""
        with self._lock:
            key = id(payload)
            if key not in self._in_flight:
                return False
            self._settling.add(key)
            return True

    def finish(self, payload: Payload, delivered: bool) -> bool:
        """The payload is delivered or definitively failed. False when it was no longer
        tracked (shutdown already reported or kept it), so it must not be counted again."""
        with self._lock:
            self._settling.discard(id(payload))
            tracked = self._in_flight.pop(id(payload), None) is not None
            if self._markers:
                self._release_markers()
            return tracked

    def has_leftovers(self) -> bool:
        """True when processes that ended left payloads for this one to deliver (an outbox)."""
        return False

    def keep(self, payloads: List[Payload]) -> List[Payload]:
        """At shutdown: keep what was not delivered for a later process; return what could not
        be kept. Memory keeps nothing; the outbox keeps everything that fits."""
        return payloads

    def add_marker(self, marker: FlushMarker) -> None:
        with self._lock:
            marker.seq = self._last_seq
            self._markers.append(marker)
            self._release_markers()

    def _release_markers(self) -> None:
        oldest = self._oldest_seq()
        keep = []
        for marker in self._markers:
            if oldest is None or oldest > marker.seq:
                marker.finished = True
                marker.done.set()
            else:
                keep.append(marker)
        self._markers = keep

    def _oldest_seq(self) -> Optional[int]:
        oldest = self._waiting[0].seq if self._waiting else None
        for payload in self._in_flight.values():
            if oldest is None or payload.seq < oldest:
                oldest = payload.seq
        return oldest

    def stop(self) -> List[Payload]:
        """Stop handing out payloads; return every unfinished one (waiting and in flight)."""
        with self._lock:
            self._stopping = True
            settling = {key: self._in_flight[key] for key in self._settling}
            left = [p for key, p in self._in_flight.items() if key not in settling]
            left += self._waiting
            self._waiting.clear()
            self._in_flight = settling  # their workers count, report and finish them
            self._retries.clear()
            self._has_work.notify_all()
            self._has_room.notify_all()
            for marker in self._markers:
                marker.done.set()
            self._markers = []
            return left

    def close(self) -> None:
        """Release resources once the pipeline is closed (nothing for memory)."""
