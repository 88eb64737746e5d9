"""The sending workers: threads that take payloads from the backlog and deliver them.

Up to ``workers`` threads, each with one request in flight at most; flow control decides how
many requests may be out at once. No payload and no failing part ends a thread: an exception is
reported with the payload it concerns (``report_unsent``) or, concerning none, as a fault, and
the thread goes on. Should one end anyway (a BaseException, such as ``sys.exit()`` in
``on_error``), what it held is reported, its ``Supervisor`` hears of it, and the next payload
submitted starts a replacement.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import List, Optional

from ._backlog import Backlog
from ._delivery import Abandoned, Delivery, TryAgain
from ._errors import InteraktError, internal_error
from ._payload import Payload
from ._report import ReportUnsent, Supervisor
from ._stats import Counters

_POLL = 0.25  # how often idle threads look at the stop flag; not a latency
_FAULT_PAUSE = 0.05  # after a fault that concerned no payload: no busy loop on a broken part
_FINISH_TRIES = 3  # a payload reported but never finished would be reported again at shutdown


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
        # re-entrant: a signal handler that drains may interrupt the main thread holding it
        self._lock = threading.RLock()
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
