"""The background side: a QueueListener that drains the queue in batches, and sending workers.

The listener moves payloads from the handler's queue into the backlog a batch at a time (one
lock round-trip, or one outbox transaction, per batch) and places flush markers; the workers take
payloads from the backlog and deliver them, up to ``workers`` requests in flight.

No payload and no failing part ends these threads: an exception is reported with the payloads
it concerns (``report_unsent``) or, concerning none, as a fault, and the thread goes on. Should
one end anyway (a BaseException, such as ``sys.exit()`` in ``on_error``), what it held is
reported, its ``Supervisor`` hears of it, and the next payload submitted starts a replacement.
"""

from __future__ import annotations

import contextlib
import logging.handlers
import queue
import threading
import time
from typing import Any, Callable, List, Optional, Protocol

from ._backlog import Backlog, FlushMarker
from ._delivery import Abandoned, Delivery, TryAgain
from ._errors import InteraktError, internal_error
from ._payload import Payload
from ._report import ReportUnsent
from ._stats import Counters

_POLL = 0.25  # how often idle threads look at the stop flag; not a latency
_FAULT_PAUSE = 0.05  # after a fault that concerned no payload: no busy loop on a broken part
_FINISH_TRIES = 3  # a payload reported but never finished would be reported again at shutdown

# What the listener could not store, and why: None for "not kept" (a full outbox, shutdown).
NotKept = Callable[[List[Payload], Optional[InteraktError]], None]


class Supervisor(Protocol):
    """What the pipeline's threads tell their owner besides the fate of payloads."""

    def fault(self, what: str, error: BaseException) -> None:
        """A failure no payload explains; the thread goes on."""

    def thread_died(self, name: str, error: BaseException) -> None:
        """The thread is ending on ``error``; a replacement is due."""


class PayloadListener(logging.handlers.QueueListener):
    """Drains the handler's queue into the backlog; never sees LogRecords, only payloads."""

    def __init__(
        self,
        q: queue.SimpleQueue[Any],
        backlog: Backlog,
        batch_size: int,
        on_not_kept: NotKept,
        supervisor: Supervisor,
    ) -> None:
        super().__init__(q)
        self._queue = q
        self.backlog = backlog
        self.batch_size = batch_size
        self.drained = threading.Event()
        self._on_not_kept = on_not_kept
        self._supervisor = supervisor
        self._stopping = False
        self._batch: List[Payload] = []  # taken from the queue, not yet stored nor reported
        self._ended = False

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._monitor, name="interakt-logging-listener", daemon=True
        )
        self._thread.start()

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def replace_if_ended(self) -> None:
        """Start a new thread if the last one ended on an error."""
        if self._ended:
            self._ended = False
            self.start()

    def _monitor(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the thread ends: report what it held, and why
            batch, self._batch = self._batch, []
            if batch:
                self._on_not_kept(batch, internal_error(exc, "moving the payload to the backlog"))
            self._ended = True
            self._supervisor.thread_died(threading.current_thread().name, exc)

    def _serve(self) -> None:
        q = self._queue
        backlog = self.backlog
        while not self._stopping:
            try:
                if not backlog.wait_for_room(_POLL):
                    continue
                try:
                    item = q.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if not self._drain(item):
                    return
            except Exception as exc:
                self._supervisor.fault("the listener failed", exc)
                time.sleep(_FAULT_PAUSE)

    def _drain(self, item: Any) -> bool:
        """Move ``item`` and what follows it (up to a batch) into the backlog; False on the
        sentinel."""
        get_nowait = self._queue.get_nowait
        try:
            while True:
                if item is None:  # QueueListener's sentinel
                    return False
                if type(item) is FlushMarker:
                    self._store()
                    self._add_marker(item)
                else:
                    self._batch.append(Payload(*item))
                    if len(self._batch) >= self.batch_size:
                        break
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            return True
        finally:
            self._store()
            self.drained.set()

    def _store(self) -> None:
        """Hand the batch to the backlog; report what it could not keep or refused with an
        error. Never raises an Exception."""
        batch = self._batch
        if not batch:
            return
        try:
            not_kept = self.backlog.put_batch(batch)
        except Exception as exc:
            self._batch = []
            self._on_not_kept(batch, internal_error(exc, "storing the payload in the backlog"))
            return
        self._batch = []
        if not_kept:
            self._on_not_kept(not_kept, None)

    def _add_marker(self, marker: FlushMarker) -> None:
        try:
            self.backlog.add_marker(marker)
        except Exception as exc:  # the flush waiting on it returns False now, not at its timeout
            marker.done.set()
            self._supervisor.fault("the listener could not place a flush marker", exc)

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
    """Sender threads, each delivering one payload at a time from the backlog.

    Threads start as the backlog needs them: one at first, another whenever a payload is taken
    while others wait, no thread is idle, and flow control would let one more request go (its
    window of requests in flight, plus one thread ready for the next slot), up to ``ceiling``.
    A thread idle for ``IDLE_EXIT`` seconds ends, down to one, so a quiet app keeps one.
    """

    IDLE_EXIT = 10.0

    def __init__(
        self,
        ceiling: int,
        backlog: Backlog,
        delivery: Delivery,
        counters: Counters,
        report_unsent: ReportUnsent,
        stop: threading.Event,
        supervisor: Supervisor,
    ) -> None:
        self._ceiling = ceiling
        self._backlog = backlog
        self._delivery = delivery
        self._flow = delivery.flow
        self._counters = counters
        self._report_unsent = report_unsent
        self._stop = stop
        self._supervisor = supervisor
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._ended = 0  # threads that ended on an error, not yet replaced
        self._idle = 0
        self._named = 0

    @property
    def threads(self) -> List[threading.Thread]:
        """The sender threads running now."""
        with self._lock:
            return list(self._threads)

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        """Start one more thread (the lock held). RuntimeError when the interpreter exits."""
        self._named += 1
        thread = threading.Thread(
            target=self._run, name=f"interakt-logging-sender-{self._named}", daemon=True
        )
        thread.start()  # first: a RuntimeError leaves nothing half-made
        self._threads.append(thread)

    def _grow(self) -> None:
        """Called by a thread that just took a payload: start one more if it would be used."""
        if not len(self._backlog) or self._idle:
            return
        with self._lock:
            wanted = min(self._ceiling, self._flow.in_flight_limit + 1)
            if not self._idle and len(self._threads) < wanted and not self._stop.is_set():
                with contextlib.suppress(RuntimeError):  # exiting: the running ones go on
                    self._spawn()

    def _retire(self, thread: threading.Thread) -> bool:
        """An idle thread may end, unless it is the last one."""
        with self._lock:
            if len(self._threads) <= 1:
                return False
            self._threads.remove(thread)
            return True

    def replace_ended(self) -> None:
        """Start a new thread in place of each one that ended on an error."""
        with self._lock:
            while self._ended:
                self._spawn()  # a RuntimeError (exiting) leaves the rest to the exit drain
                self._ended -= 1

    def join(self, deadline: float) -> None:
        """Wait for the threads to end, all of them together until ``deadline`` (monotonic)."""
        current = threading.current_thread()  # close() may come from on_error, on a worker
        for thread in self.threads:
            if thread.is_alive() and thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> Optional[Payload]:
        with self._lock:
            self._idle += 1
        try:
            return self._backlog.take(_POLL)
        finally:
            with self._lock:
                self._idle -= 1

    def _run(self) -> None:
        backlog, stop = self._backlog, self._stop
        me = threading.current_thread()
        held: Optional[Payload] = None  # taken from the backlog, not yet settled or handed back
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    held = self._take()
                except Exception as exc:
                    self._supervisor.fault("a sender could not take from the backlog", exc)
                    stop.wait(_FAULT_PAUSE)
                    continue
                if held is None:
                    if time.monotonic() - idle_since > self.IDLE_EXIT and self._retire(me):
                        return
                    continue
                idle_since = time.monotonic()
                self._grow()
                payload = held
                error: Optional[Exception] = None
                try:
                    result = self._delivery.attempt(payload)
                    if isinstance(result, TryAgain):
                        backlog.retry_later(payload, result.delay)
                        held = None
                        continue
                except Abandoned:
                    return  # the backlog still lists it: shutdown reports or keeps it
                except InteraktError as exc:
                    error = exc
                except Exception as exc:  # a bug, or a failing part: fail this payload only
                    error = internal_error(exc, "sending the payload")
                held = None
                self._settle(payload, error)
        except BaseException as exc:  # the thread ends: settle what it held, and say why
            if held is not None:
                self._settle(held, internal_error(exc, "sending the payload"))
            with self._lock:
                if me in self._threads:
                    self._threads.remove(me)
                self._ended += 1
            self._supervisor.thread_died(me.name, exc)

    def _settle(self, payload: Payload, error: Optional[Exception]) -> None:
        """Count and report first, then finish: a flush waiting on this payload returns only
        after on_error has run. Never raises an Exception."""
        delivered = error is None
        try:
            try:
                ours = self._backlog.claim(payload)
            except Exception as exc:  # cannot tell whether shutdown took it over: report it
                self._supervisor.fault("a sender could not settle a payload", exc)
                ours = True
            if not ours:
                return
            if error is None:
                self._counters.add("sent")
            else:
                self._report_unsent(error, payload.on_error_arg())
        finally:
            self._finish(payload, delivered)

    def _finish(self, payload: Payload, delivered: bool) -> None:
        """Tell the backlog, retrying a failure: a payload never finished holds up every
        flush, and shutdown would report it once more."""
        for tries in range(1, _FINISH_TRIES + 1):
            try:
                self._backlog.finish(payload, delivered=delivered)
                return
            except Exception as exc:
                if tries == _FINISH_TRIES:
                    self._supervisor.fault("a sender could not finish a payload", exc)
                    return
                self._stop.wait(_FAULT_PAUSE)
