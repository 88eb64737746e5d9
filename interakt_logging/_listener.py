"""The background side: a QueueListener that drains the queue in batches, and sending workers.

The listener moves payloads from the handler's queue into the backlog a batch at a time (one
lock round-trip, or one outbox transaction, per batch) and places flush markers; the workers take
payloads from the backlog and deliver them, up to ``workers`` requests in flight.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
import time
from typing import Any, Callable, List, Optional

from ._backlog import FlushMarker, MemoryBacklog
from ._delivery import Abandoned, Delivery
from ._errors import InteraktError
from ._payload import Payload
from ._stats import Counters

logger = logging.getLogger("interakt_logging")

_POLL = 0.25  # how often idle threads look at the stop flag; not a latency


class PayloadListener(logging.handlers.QueueListener):
    """Drains the handler's queue into the backlog; never sees LogRecords, only payloads."""

    def __init__(
        self,
        q: queue.SimpleQueue[Any],
        backlog: MemoryBacklog,
        batch_size: int,
        on_not_kept: Callable[[List[Payload]], None],
    ) -> None:
        super().__init__(q)
        self._queue = q
        self.backlog = backlog
        self.batch_size = batch_size
        self.drained = threading.Event()
        self._on_not_kept = on_not_kept
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._monitor, name="interakt-logging-listener", daemon=True
        )
        self._thread.start()

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def _monitor(self) -> None:
        q = self._queue
        backlog = self.backlog
        while not self._stopping:
            if not backlog.wait_for_room(_POLL):
                continue
            try:
                item = q.get(timeout=_POLL)
            except queue.Empty:
                continue
            if not self._drain(item):
                return

    def _drain(self, item: Any) -> bool:
        """Move ``item`` and what follows it (up to a batch) into the backlog; False on the
        sentinel."""
        get_nowait = self._queue.get_nowait
        batch: List[Payload] = []
        try:
            while True:
                if item is None:  # QueueListener's sentinel
                    return False
                if type(item) is FlushMarker:
                    self._store(batch)
                    batch = []
                    self.backlog.add_marker(item)
                else:
                    batch.append(Payload(*item))
                    if len(batch) >= self.batch_size:
                        break
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            return True
        finally:
            self._store(batch)
            self.drained.set()

    def _store(self, batch: List[Payload]) -> None:
        if batch:
            not_kept = self.backlog.put_batch(batch)
            if not_kept:
                self._on_not_kept(not_kept)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end and wait for it at most ``timeout`` seconds."""
        self._stopping = True
        thread = self._thread
        if thread is not None:
            self.enqueue_sentinel()
            if thread is not threading.current_thread():  # close() from on_error, say
                thread.join(timeout)
            self._thread = None


class Workers:
    """``count`` daemon threads, each delivering one payload at a time from the backlog."""

    def __init__(
        self,
        count: int,
        backlog: MemoryBacklog,
        delivery: Delivery,
        counters: Counters,
        reject: Callable[[Exception, Any], None],
        stop: threading.Event,
    ) -> None:
        self._backlog = backlog
        self._delivery = delivery
        self._counters = counters
        self._reject = reject
        self._stop = stop
        self.threads = [
            threading.Thread(target=self._run, name=f"interakt-logging-sender-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, deadline: float) -> None:
        """Wait for the threads to end, all of them together until ``deadline`` (monotonic)."""
        current = threading.current_thread()  # close() may come from on_error, on a worker
        for thread in self.threads:
            if thread.is_alive() and thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        backlog, stop = self._backlog, self._stop
        while not stop.is_set():
            payload = backlog.take(_POLL)
            if payload is None:
                continue
            error: Optional[Exception] = None
            try:
                delivered, delay = self._delivery.attempt(payload)
                if not delivered:
                    backlog.retry_later(payload, delay)
                    continue
            except Abandoned:
                return  # the backlog still lists it: shutdown reports or keeps it
            except InteraktError as exc:
                error = exc
            except Exception as exc:  # pragma: no cover - a bug; keep the worker alive
                logger.exception("interakt-logging: unexpected error while sending")
                error = exc
            self._settle(payload, error)

    def _settle(self, payload: Payload, error: Optional[Exception]) -> None:
        """Count and report first, then finish: a flush waiting on this payload returns only
        after on_error has run."""
        if self._backlog.begin_settle(payload):
            if error is None:
                self._counters.add("sent")
            else:
                self._reject(error, payload.message())
        self._backlog.finish(payload, delivered=error is None)
