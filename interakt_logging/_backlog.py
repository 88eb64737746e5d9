"""The backlog: payloads the listener has drained and the workers have not finished.

It tracks both the payloads waiting for a worker and those in flight, so it can answer "is
everything up to sequence number N finished?", which is what ``flush`` waits for, and it tallies
how the payloads between two flushes ended, which is what ``flush`` returns. ``Backlog`` is that
contract, the one type the pipeline, the listener and the workers see. ``MemoryBacklog`` here is
the default; ``OutboxBacklog`` keeps the same contract on disk.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Protocol, Set, Tuple

from ._payload import Payload


@dataclass(frozen=True)
class FlushResult:
    """What ``flush()`` found: of the payloads queued since the previous flush (up to this one),
    how many were ``delivered`` and how many ``failed`` (refused, out of retries, or reported at
    shutdown); ``pending`` counts what was queued before the call and had not finished when it
    returned (0 unless it timed out). True only when nothing failed and nothing is pending."""

    delivered: int = 0
    failed: int = 0
    pending: int = 0

    def __bool__(self) -> bool:
        return self.failed == 0 and self.pending == 0


class FlushMarker:
    """Put on the queue by ``flush`` and ``close``; ``done`` is set once everything queued
    before it is finished. It tallies the outcomes of the payloads queued between the previous
    marker and itself: ``seq`` is the last of them."""

    __slots__ = ("ahead", "delivered", "done", "failed", "pending", "placed", "seq")

    def __init__(self, ahead: int = 0) -> None:
        self.done = threading.Event()
        self.placed = False  # the listener has reached it: ``seq`` is known
        self.seq = 0
        self.ahead = ahead  # queue items before it when it was queued (for ``pending``)
        self.delivered = 0
        self.failed = 0
        self.pending = 0  # unfinished when shutdown released it

    @property
    def finished(self) -> bool:
        """Released with everything before it finished."""
        return self.done.is_set() and not self.pending


class Unfinished(NamedTuple):
    """What ``stop`` took back: payloads no worker was sending (never taken, or waiting for a
    retry) and payloads whose request was out, so the API may have recorded them."""

    waiting: List[Payload]
    sending: List[Payload]


class Backlog(Protocol):
    """Payloads between the listener and the workers: what the pipeline's threads rely on.

    ``MemoryBacklog`` keeps them in memory; ``OutboxBacklog`` extends it with an SQLite file
    below the same in-memory window (it is a memory backlog whose waiting part is topped up
    from disk), so the bookkeeping is written once and the disk side adds only what differs.
    Every outcome is counted once: a payload taken back by ``stop`` is no longer ``claim``-ed
    nor ``finish``-ed by its worker.
    """

    def __len__(self) -> int:
        """Payloads waiting for a worker (for an outbox, also its rows only on disk)."""

    @property
    def in_flight(self) -> int:
        """Payloads a worker took and has not finished."""

    @property
    def finished_count(self) -> int:
        """Payloads delivered or failed for good so far; a drain watches it for progress."""

    # -- the listener's side
    def wait_for_room(self, timeout: float) -> bool: ...
    def put_batch(self, payloads: List[Payload]) -> List[Payload]: ...
    def add_marker(self, marker: FlushMarker) -> None: ...
    def count_failed(self, count: int) -> None: ...

    # -- the workers' side
    def take(self, timeout: float) -> Optional[Payload]: ...
    def retry_later(self, payload: Payload, delay: float) -> None: ...
    def claim(self, payload: Payload) -> bool: ...
    def finish(self, payload: Payload, delivered: bool) -> bool: ...

    # -- the pipeline's side: flush, close, start
    def has_leftovers(self) -> bool: ...
    def result(self, marker: FlushMarker, queued: int) -> FlushResult: ...
    def stop_taking(self) -> None: ...
    def stop(
        self,
        keep_sending: bool = False,
        on_stranded: Optional[Callable[[Payload], None]] = None,
        on_idle: Optional[Callable[[], None]] = None,
    ) -> Unfinished: ...
    def reap(self) -> None: ...
    def mark_sending(self, marker: FlushMarker) -> None: ...
    def release_unplaced(self, marker: FlushMarker, ahead: int) -> None: ...
    def keep_or_return(self, payloads: List[Payload]) -> List[Payload]: ...
    def close(self) -> None: ...


class MemoryBacklog:
    """A ``Backlog`` in memory: waiting payloads in a deque, in-flight ones in a dict, flush
    markers in a list.

    ``room`` bounds the waiting part, so the listener stops draining the queue while the
    workers are behind: memory stays bounded by ``max_queue_size + room + workers``.
    """

    def __init__(self, room: int) -> None:
        self._room = room
        # Re-entrant: flush() holds it on the calling thread, and a signal handler that
        # flushes or closes right then must not wait for that very thread.
        self._lock = threading.RLock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._waiting: Deque[Payload] = collections.deque()
        self._in_flight: Dict[int, Payload] = {}
        self._settling: Set[int] = set()  # in flight, outcome being counted and reported
        self._retries: List[Tuple[float, int, Payload]] = []  # (due, seq, payload), a heap
        self._markers: List[FlushMarker] = []
        self._last_seq = 0
        self._stopping = False
        self._finished = 0  # payloads finished so far: how a drain sees progress
        self._taken_back = 0  # unfinished payloads stop() took back
        self._stranded: List[Payload] = []  # due for a retry after stopping: nobody will
        # Set while a close leaves requests out: a stranded one is settled by the pipeline at
        # once, and the last one to end lets it finish closing.
        self.on_stranded: Optional[Callable[[Payload], None]] = None
        self.on_idle: Optional[Callable[[], None]] = None
        # the worker that took each payload in flight: one that has ended holds no request
        self._holders: Dict[int, threading.Thread] = {}
        # outcomes of payloads queued after the last placed marker: (delivered, failed)
        self._tally = [0, 0]

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def finished_count(self) -> int:
        """Payloads delivered or failed for good so far; a drain watches it for progress."""
        return self._finished

    def put_batch(self, payloads: List[Payload]) -> List[Payload]:
        """Take over a drained batch; returns the payloads that could not be kept (all of them
        once stopped: shutdown has already taken stock, so the caller must report them)."""
        with self._lock:
            if self._stopping:
                return payloads
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
                    payload = heapq.heappop(self._retries)[2]
                    self._holders[id(payload)] = threading.current_thread()
                    return payload
                if self._waiting:
                    payload = self._waiting.popleft()
                    self._in_flight[id(payload)] = payload
                    self._holders[id(payload)] = threading.current_thread()
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
        worker is free meanwhile, and flush still waits for it. Once stopped nobody would
        retry it: it is stranded (see ``_strand``)."""
        with self._lock:
            if not self._stopping:
                heapq.heappush(self._retries, (time.monotonic() + delay, payload.seq, payload))
                self._has_work.notify()
                return
            settle, idle = self._strand([payload])
        if settle is not None:
            settle(payload)
        if idle is not None:
            idle()

    def reap(self) -> None:
        """Once stopped: strand the payloads whose worker ended without finishing them (it gave
        up before sending, as the pipeline stopped)."""
        with self._lock:
            if not self._stopping:
                return
            dead = [
                payload for key, payload in self._in_flight.items()
                if key not in self._settling and not self._holder_alive(key)
            ]
            settle, idle = self._strand(dead)
        if settle is not None:
            for payload in dead:
                settle(payload)
        if idle is not None:
            idle()

    def _strand(
        self, payloads: List[Payload]
    ) -> Tuple[Optional[Callable[[Payload], None]], Optional[Callable[[], None]]]:
        """Take ``payloads`` out of flight for good (lock held): to ``on_stranded``, which the
        caller calls with them once the lock is released (a close left requests out and
        settles these at once), else kept for the next ``stop``. Returns that callback and the
        idle hook when this was the last one out."""
        stranded = [p for p in payloads if self._in_flight.pop(id(p), None) is not None]
        for payload in stranded:
            self._holders.pop(id(payload), None)
        settle = self.on_stranded
        if settle is None:
            self._stranded.extend(stranded)
        else:
            self._finished += len(stranded)
        self._release_markers()
        return (settle if stranded else None), self._idle_hook()

    def _holder_alive(self, key: int) -> bool:
        holder = self._holders.get(key)
        return holder is not None and holder.is_alive()

    def claim(self, payload: Payload) -> bool:
        """Claim ``payload``'s outcome for its worker, which counts and reports it, then
        ``finish``-es it: from now on shutdown leaves it to the worker. False when shutdown
        already took it over (reported or kept it): the worker must not count or report it."""
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
            self._holders.pop(id(payload), None)
            tracked = self._in_flight.pop(id(payload), None) is not None
            if tracked:
                self._finished += 1
                self._count(payload.seq, delivered)
            if self._markers:
                self._release_markers()
            idle = self._idle_hook() if tracked else None
        if idle is not None:
            idle()
        return tracked

    def _idle_hook(self) -> Optional[Callable[[], None]]:
        """``on_idle``, once, when stopped and no request is out any more (lock held)."""
        if not self._stopping or self._in_flight or self.on_idle is None:
            return None
        idle, self.on_idle = self.on_idle, None
        return idle

    def count_failed(self, count: int) -> None:
        """``count`` payloads the listener drained could not be kept (and were reported): they
        belong to the next flush's tally, as they were queued before its marker."""
        with self._lock:
            self._tally[1] += count

    def _count(self, seq: int, delivered: bool) -> None:
        """Add an outcome to the tally of the first marker at or after ``seq``, else to the
        tally of the payloads no marker covers yet."""
        tally = self._tally
        for marker in self._markers:
            if marker.seq >= seq:
                if delivered:
                    marker.delivered += 1
                else:
                    marker.failed += 1
                return
        tally[0 if delivered else 1] += 1

    def has_leftovers(self) -> bool:
        """True when processes that ended left payloads for this one to deliver (an outbox)."""
        return False

    def keep_or_return(self, payloads: List[Payload]) -> List[Payload]:
        """At shutdown: keep what was not delivered for a later process, and return the rest
        (the caller reports it). Memory keeps nothing; the outbox keeps everything that fits."""
        return payloads

    def add_marker(self, marker: FlushMarker) -> None:
        """The listener reached ``marker``: it covers everything drained so far, and takes over
        the outcomes tallied since the previous marker."""
        with self._lock:
            marker.seq = self._last_seq
            marker.placed = True
            marker.delivered, marker.failed = self._tally
            self._tally = [0, 0]
            if self._stopping:
                self.release_unplaced(marker, 0)
                return
            self._markers.append(marker)
            self._release_markers()

    def result(self, marker: FlushMarker, queued: int) -> FlushResult:
        """What ``flush`` returns for ``marker``; ``queued`` is how many items the queue holds
        now (the payloads still ahead of an unplaced marker are among them)."""
        with self._lock:
            if marker.done.is_set():  # pending: what shutdown left unfinished
                return FlushResult(marker.delivered, marker.failed, marker.pending)
            if marker.placed:
                return FlushResult(
                    marker.delivered, marker.failed, self._unfinished_upto(marker.seq)
                )
            ahead = min(marker.ahead, queued)
            return FlushResult(
                self._tally[0], self._tally[1], self._unfinished_upto(None) + ahead
            )

    def _unfinished_upto(self, seq: Optional[int]) -> int:
        """Unfinished payloads with a seq up to ``seq`` (all when None), rows only on disk
        included (an outbox holds more than it has in memory: ``len`` counts them)."""
        unfinished = [*self._waiting, *self._in_flight.values()]
        on_disk_only = max(0, len(self) - len(self._waiting))
        if seq is None:
            return len(unfinished) + on_disk_only
        return sum(1 for payload in unfinished if payload.seq <= seq) + on_disk_only

    def _release_markers(self) -> None:
        # Once stopped, only the requests still out (in memory) are unfinished here: the rest
        # was taken back, even if an outbox still holds its rows for the next process.
        oldest = MemoryBacklog._oldest_seq(self) if self._stopping else self._oldest_seq()
        keep = []
        for marker in self._markers:
            if oldest is None or oldest > marker.seq:
                marker.pending = sum(1 for p in self._stranded if p.seq <= marker.seq)
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

    def stop_taking(self) -> None:
        """Hand out no more payloads; those in flight may still finish normally."""
        with self._lock:
            self._stopping = True
            self._has_work.notify_all()
            self._has_room.notify_all()

    def stop(
        self,
        keep_sending: bool = False,
        on_stranded: Optional[Callable[[Payload], None]] = None,
        on_idle: Optional[Callable[[], None]] = None,
    ) -> Unfinished:
        """Stop handing out payloads and take back every unfinished one, except those whose
        outcome a worker is already counting (it finishes them) and, with ``keep_sending``,
        those whose request is out (their workers finish them; ``sending`` lists them, and the
        two hooks are set for them). Releases every marker, unfinished. What is taken back is
        the caller's to keep or report; a later ``finish`` of one of them returns False, so it
        is never counted twice."""
        with self._lock:
            self._stopping = True
            retrying = {id(entry[2]) for entry in self._retries}
            still_out = {key: self._in_flight[key] for key in self._settling}
            waiting = [*self._waiting, *self._stranded]
            sending: List[Payload] = []
            for key, payload in self._in_flight.items():
                if key in self._settling:
                    continue
                if key in retrying or not self._holder_alive(key):
                    waiting.append(payload)  # not being sent: its worker gave up or ended
                else:
                    sending.append(payload)
                    if keep_sending:
                        still_out[key] = payload
            self._holders = {key: self._holders[key] for key in still_out if key in self._holders}
            self._waiting.clear()
            self._stranded = []
            self._in_flight = still_out  # their workers count, report and finish them
            self._retries.clear()
            self._has_work.notify_all()
            self._has_room.notify_all()
            left_out = keep_sending and bool(sending)
            self.on_stranded = on_stranded if left_out else None
            self.on_idle = on_idle if left_out else None
            left = waiting if keep_sending else [*waiting, *sending]
            self._taken_back = len(left)
            for marker in self._markers:
                marker.pending = sum(1 for payload in left if payload.seq <= marker.seq)
                marker.done.set()
            self._markers = []
            return Unfinished(waiting, sending)

    def mark_sending(self, marker: FlushMarker) -> None:
        """After ``stop(keep_sending=True)``: ``marker`` is done once the requests still out
        have finished (or a retry stranded them)."""
        with self._lock:
            marker.seq = self._last_seq
            marker.placed = True
            self._markers.append(marker)
            self._release_markers()

    def release_unplaced(self, marker: FlushMarker, ahead: int) -> None:
        """After ``stop``: release a marker the listener never placed, with ``ahead`` payloads
        that were before it in the queue; what ``stop`` took back was before it too."""
        marker.pending = self._taken_back + ahead
        marker.done.set()

    def close(self) -> None:
        """Release resources once the pipeline is closed (nothing for memory)."""
