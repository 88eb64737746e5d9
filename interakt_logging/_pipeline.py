"""The pipeline behind every InteraktHandler: queue, listener, workers, and their life cycle.

The handler, the structlog processor and the ``track`` module all hand validated payloads to a
pipeline: ``submit`` (background: bounded queue, never blocks or raises by default) or ``send``
(sync mode: on the calling thread). Threads start on first use, so a process that forks workers
before logging anything (gunicorn, Celery) starts none in the parent.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

from . import _lifecycle
from ._backlog import FlushMarker, MemoryBacklog
from ._delivery import Abandoned, Delivery
from ._errors import DeliveryError, InteraktError, QueueFullError
from ._flow import FlowControl
from ._listener import PayloadListener, Workers
from ._outbox import OutboxBacklog, check_outbox
from ._payload import Payload, QueuedPayload
from ._report import Reporter
from ._settings import Settings
from ._stats import Counters
from ._transport import Transport
from ._version import user_agent

logger = logging.getLogger("interakt_logging")

# Callables that receive every payload instead of the network (``testing.capture``), changed
# only through add_interceptor/remove_interceptor. Checked on every submit; empty in production,
# where the check is one global lookup. Replaced, never mutated, so a sender iterating it is safe.
interceptors: List[Callable[[Payload], None]] = []
_interceptors_lock = threading.Lock()


def add_interceptor(intercept: Callable[[Payload], None]) -> None:
    """From now on, every payload of every pipeline goes to ``intercept`` instead of the API."""
    global interceptors
    with _interceptors_lock:
        interceptors = [*interceptors, intercept]


def remove_interceptor(intercept: Callable[[Payload], None]) -> None:
    """Undo one ``add_interceptor(intercept)``; sending resumes once none is left."""
    global interceptors
    with _interceptors_lock:
        remaining = list(interceptors)
        remaining.remove(intercept)
        interceptors = remaining


def capturing() -> bool:
    """True while an interceptor is registered (a ``testing.capture()`` block is active)."""
    return bool(interceptors)

_CLOSED = "the handler is closed; payload not sent"


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._state_lock = threading.Lock()
        self._closed = False
        self._exit_deadline: Optional[float] = None
        if settings.outbox is not None:
            check_outbox(settings.outbox)  # here, not in a forked child's rebuild or a thread
        self._build()
        _lifecycle.register(self)
        if settings.api_key is not None and self.backlog.has_leftovers():
            self._ensure_started()  # deliver what ended processes left, without waiting for a log

    def _build(self) -> None:
        """Fresh queue, threads and connections: at construction and in a forked child."""
        s = self.settings
        self._pid = os.getpid()
        self._started = False
        self.counters = Counters()
        self.reporter = Reporter(s.on_error)
        self.queue: queue.SimpleQueue[Union[QueuedPayload, FlushMarker, None]] = (
            queue.SimpleQueue()
        )
        # bound once: submit() runs on every tagged logging call
        self._put = self.queue.put
        self._queued = self.queue.qsize
        self._max_queued = s.max_queue_size
        self._bump_enqueued = self.counters.bump_enqueued
        self.flow = FlowControl(rate_limit=s.rate_limit)
        # without a key nothing reaches the transport: the handler refuses every payload
        self.transport = Transport(s.api_key or "", s.host, s.timeout, s.workers, user_agent())
        self._stop = threading.Event()
        self.delivery = Delivery(
            self.transport, self.flow, self.counters, s.max_retries, self._stop
        )
        self.backlog = self._make_backlog()
        self.listener = PayloadListener(self.queue, self.backlog, s.batch_size, self._not_kept)
        self.workers = Workers(
            s.workers, self.backlog, self.delivery, self.counters, self.reject, self._stop
        )

    def _make_backlog(self) -> MemoryBacklog:
        if self.settings.outbox is not None:
            return OutboxBacklog(
                self.settings.outbox,
                room=self.settings.batch_size,
                max_bytes=self.settings.outbox_max_bytes,
                counters=self.counters,
                reject=self.reject,
            )
        return MemoryBacklog(room=self.settings.batch_size)

    def __repr__(self) -> str:
        return f"<Pipeline host={self.settings.host!r} sync_mode={self.settings.sync_mode}>"

    # -- the calling side ---------------------------------------------------------------------

    def submit(self, payload: QueuedPayload) -> bool:
        """Queue ``payload`` for the background sender. Never raises; False when dropped."""
        if interceptors:
            for intercept in interceptors:
                intercept(Payload(*payload))
            return True
        # The fork hook resets _started in a child; a fork that bypassed it (no os.getpid() here:
        # it costs ~150 ns a call) shows up as a queue nobody drains, checked when it is full.
        if not self._started and not self._ensure_started():
            if not self._closed:
                return self._send_at_exit(payload)
            self.reject(DeliveryError(_CLOSED, "closed"), Payload(*payload).message())
            return False
        if self._queued() >= self._max_queued and not self._make_space():
            self.reject(QueueFullError(
                f"queue full ({self._max_queued} payloads); payload dropped"
            ), Payload(*payload).message())
            return False
        self._put(payload)
        self._bump_enqueued()
        return True

    def send(self, queued: QueuedPayload, deadline: Optional[float] = None) -> Any:
        """Sync mode: deliver on the calling thread with the same retry policy; raise on failure."""
        payload = Payload(*queued)
        if interceptors:
            for intercept in interceptors:
                intercept(payload)
            return {"result": True, "message": "captured by interakt_logging.testing"}
        self.counters.bump_enqueued()
        try:
            answer = self.delivery.send(payload, deadline)
        except Abandoned:
            self.counters.add("failed")
            raise DeliveryError(_CLOSED, "closed") from None
        except InteraktError:
            self.counters.add("failed")
            raise
        self.counters.add("sent")
        return answer

    def _send_at_exit(self, payload: QueuedPayload) -> bool:
        """No thread can start once the interpreter is exiting (a stdlib QueueListener handing
        over its last records at exit, say): deliver on the calling thread rather than drop the
        payload. One deadline, shutdown_timeout from the first such payload, bounds them all.
        With an outbox the payload is written there instead, for the next process."""
        if self.settings.outbox is not None:
            for lost in self.backlog.keep([Payload(*payload)]):
                self.reject(QueueFullError("outbox full; payload dropped"), lost.message())
                return False
            return True
        if self._exit_deadline is None:
            self._exit_deadline = time.monotonic() + self.settings.shutdown_timeout
        try:
            self.send(payload, deadline=self._exit_deadline)
        except InteraktError as exc:
            self.reporter.report(exc, Payload(*payload).message())
            return False
        return True

    def reject(self, error: Exception, reported: Any) -> None:
        """Count what will not be sent (dropped for a full queue or outbox, else failed) and
        report it: ``on_error(error, reported)`` and the warning. Every front door and the
        workers use this one."""
        self.counters.add("dropped" if isinstance(error, QueueFullError) else "failed")
        self.reporter.report(error, reported)

    def _make_space(self) -> bool:
        if self._pid != os.getpid():
            self._ensure_started()  # forked behind our back: rebuild, and the queue is empty
            return True
        if not self.settings.block_on_full:
            return False
        deadline = time.monotonic() + self.settings.block_timeout
        drained = self.listener.drained
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            drained.clear()
            if self.queue.qsize() < self.settings.max_queue_size:
                return True
            drained.wait(min(remaining, 0.05))

    def _ensure_started(self) -> bool:
        with self._state_lock:
            if self._pid != os.getpid():
                self._build()  # forked without our at-fork hook having run
            if self._closed:
                return False
            if not self._started:
                try:
                    self.listener.start()
                    self.workers.start()
                except RuntimeError:  # interpreter shutting down: no new threads
                    return False
                self._started = True
                self._drain_at_multiprocessing_exit()
            return True

    def _drain_at_multiprocessing_exit(self) -> None:
        """A fork-started multiprocessing child ends with os._exit(), which skips atexit; its
        finalizers still run, so the exit drain is registered there too (close is idempotent)."""
        mp = sys.modules.get("multiprocessing")
        if mp is not None and mp.parent_process() is not None:
            import multiprocessing.util

            multiprocessing.util.Finalize(None, self.close, exitpriority=100)

    def _not_kept(self, payloads: List[Payload]) -> None:
        for payload in payloads:
            self.reject(QueueFullError("outbox full; payload dropped"), payload.message())

    # -- flush, close, fork -------------------------------------------------------------------

    def _own_thread(self) -> bool:
        current = threading.current_thread()
        return current is self.listener.thread or current in self.workers.threads

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is delivered or failed. True if so."""
        if timeout is None:
            timeout = self.settings.shutdown_timeout
        if (
            self.settings.sync_mode or not self._started or self._closed
            or self._pid != os.getpid()
        ):
            return True  # nothing of this process is queued
        if self._own_thread():
            return False  # called from on_error on a sender thread: waiting would deadlock
        return self._wait_for_queued(timeout)

    def _wait_for_queued(self, timeout: float) -> bool:
        marker = FlushMarker()
        self.queue.put(marker)
        return marker.done.wait(timeout) and marker.finished

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout`` (default shutdown_timeout), stop the threads, and report
        (or keep in the outbox) whatever is left. Idempotent; True when nothing was left."""
        with self._state_lock:
            if self._closed:
                return True
            self._closed = True
        _lifecycle.unregister(self)
        if timeout is None:
            timeout = self.settings.shutdown_timeout
        deadline = time.monotonic() + timeout
        left: List[Payload] = []
        if self._started and self._pid == os.getpid():
            if not self._own_thread():
                self._wait_for_queued(timeout)  # not flush(): that returns at once when closed
            self.listener.stop(max(0.0, deadline - time.monotonic()))
            self._stop.set()
            self.flow.stop()
            left = self.backlog.stop()
            self.workers.join(min(deadline, time.monotonic() + 0.2))
            self._started = False  # a later submit finds the pipeline closed and refuses
        left.extend(self._drain_queue())
        lost = self.backlog.keep(left)
        # What stays in an outbox: also its rows that were never loaded into memory.
        kept = len(self.backlog) if self.settings.outbox is not None else 0
        for payload in lost:
            self.reject(
                DeliveryError(
                    f"not delivered within shutdown_timeout={self.settings.shutdown_timeout}s; "
                    "payload lost (configure an outbox to keep such payloads)",
                    "shutdown",
                ),
                payload.message(),
            )
        if lost or kept:
            logger.warning(
                "interakt-logging: closed with %d payload(s) undelivered: %d lost, %d kept in "
                "the outbox", len(lost) + kept, len(lost), kept,
            )
        self.backlog.close()
        self.transport.close()
        return not (lost or kept)

    def _drain_queue(self) -> List[Payload]:
        left: List[Payload] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return left
            if isinstance(item, FlushMarker):
                item.done.set()
            elif item is not None:
                left.append(Payload(*item))

    def after_fork(self) -> None:
        """In a forked child: forget the parent's queue, threads and connections; start anew
        on first use. The parent's payloads stay the parent's to deliver."""
        self._state_lock = threading.Lock()
        if not self._closed:
            self._build()

    def stats(self) -> Dict[str, Any]:
        values: Dict[str, Any] = self.counters.snapshot()
        values["queue_depth"] = self.queue.qsize() + len(self.backlog)
        values["in_flight"] = self.backlog.in_flight
        values["circuit"] = self.flow.state
        return values
