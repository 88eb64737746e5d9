"""The pipeline behind every InteraktHandler: queue, listener, workers, and their life cycle.

The handler, the structlog processor and the ``track`` module all hand validated payloads to a
pipeline: ``submit`` (background: bounded queue, never blocks or raises by default) or ``send``
(sync mode: on the calling thread). Threads start on first use, so a process that forks workers
before logging anything (gunicorn, Celery) starts none in the parent.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from . import _lifecycle
from ._backlog import Backlog, FlushMarker, FlushResult, MemoryBacklog, Unfinished
from ._delivery import Abandoned, Delivery
from ._errors import DeliveryError, InteraktError, QueueFullError
from ._flow import FlowControl
from ._lifecycle import Undelivered
from ._listener import PayloadListener
from ._outbox import OutboxBacklog, check_outbox
from ._payload import Payload, QueuedPayload
from ._report import Reporter
from ._settings import Settings
from ._shared_limit import SharedLimit
from ._stats import Counters
from ._transport import Transport
from ._version import user_agent
from ._workers import Workers

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
_LISTENER_STOP = 0.5  # seconds close waits for the listener to hand over its batch
_STOCK_WAIT = 5.0  # seconds a concurrent close waits for the first one to take stock
_GIVE_UP_TIME = 0.05  # seconds a worker waiting to send needs to end once the pipeline stops


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # re-entrant: a signal handler may close (drain), or log (see _ensure_started), while
        # this thread holds it
        self._state_lock = threading.RLock()
        self._closed = False  # new payloads are refused
        self._closing: Optional[FlushMarker] = None  # set by begin_close
        self._ending = False  # end_close has taken stock at least once
        self._taking = False  # ... and is doing so right now, on thread _taker
        self._taker = 0
        self._stock_taken = threading.Event()  # set when no stock-taking is under way
        self._requests_out = False  # a close left requests out to their workers
        self._unreported: Deque[Tuple[DeliveryError, Payload]] = collections.deque()
        self._reporters: Dict[int, int] = {}  # threads reporting from _unreported, and depth
        # re-entrant: an app's signal handler may close() while this thread reports
        self._reporting_done = threading.Condition(threading.RLock())
        self._ended = False
        self._starting = False
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
        # bound once: submit() runs on every tagged logging call. After a thread of the
        # pipeline ended on an error, _put is _replace_then_put until a replacement started.
        self._put: Callable[[QueuedPayload], None] = self.queue.put
        self._queued = self.queue.qsize
        self._max_queued = s.max_queue_size
        self._bump_enqueued = self.counters.bump_enqueued
        self.shared_limit = (
            None if s.rate_limit_store is None or s.rate_limit is None or s.api_key is None
            else SharedLimit(s.rate_limit_store, s.rate_limit, s.api_key)
        )
        self.flow = FlowControl(
            rate_limit=s.rate_limit, max_in_flight=s.workers, shared=self.shared_limit
        )
        # without a key nothing reaches the transport: the handler refuses every payload
        self.transport = Transport(s.api_key or "", s.host, s.timeout, s.workers, user_agent())
        self._stop = threading.Event()
        self.delivery = Delivery(
            self.transport, self.flow, self.counters, s.max_retries, self._stop
        )
        self.backlog = self._make_backlog()
        self.listener = PayloadListener(
            self.queue, self.backlog, s.batch_size, self._not_kept, self
        )
        self.workers = Workers(
            s.workers, self.backlog, self.delivery, self.counters, self.report_unsent,
            self._stop, self,
        )

    def _make_backlog(self) -> Backlog:
        if self.settings.outbox is not None:
            return OutboxBacklog(
                self.settings.outbox,
                room=self.settings.batch_size,
                max_bytes=self.settings.outbox_max_bytes,
                counters=self.counters,
                report_unsent=self.report_unsent,
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
            self.report_unsent(DeliveryError(_CLOSED, "closed"), Payload(*payload).on_error_arg())
            return False
        if self._queued() >= self._max_queued and not (
            self._rebuilt_after_fork() or self._waited_for_room()
        ):
            self.report_unsent(QueueFullError(
                f"queue full ({self._max_queued} payloads); payload dropped"
            ), Payload(*payload).on_error_arg())
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
            for lost in self.backlog.keep_or_return([Payload(*payload)]):
                error = QueueFullError("outbox full; payload dropped")
                self.report_unsent(error, lost.on_error_arg())
                return False
            return True
        if self._exit_deadline is None:
            self._exit_deadline = time.monotonic() + self.settings.shutdown_timeout
        try:
            self.send(payload, deadline=self._exit_deadline)
        except InteraktError as exc:
            self.reporter.report(exc, Payload(*payload).on_error_arg())
            return False
        return True

    def report_unsent(self, error: Exception, on_error_arg: Any) -> None:
        """Count what will not be sent (dropped for a full queue or outbox, else failed) and
        report it: ``on_error(error, on_error_arg)`` and the warning. Every front door and the
        workers use this one."""
        self.counters.add("dropped" if isinstance(error, QueueFullError) else "failed")
        self.reporter.report(error, on_error_arg)

    def _rebuilt_after_fork(self) -> bool:
        """A full queue in a child forked behind our back (no at-fork hook ran) is the parent's:
        rebuild the pipeline, whose queue is empty. True when it did."""
        if self._pid == os.getpid():
            return False
        self._ensure_started()
        return True

    def _waited_for_room(self) -> bool:
        """With ``block_on_full``: wait up to ``block_timeout`` for the queue to have room.
        True when it has; at once False otherwise."""
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
                if self._starting:
                    # A signal handler logging on this thread, in the middle of the start
                    # below: the interrupted call completes it; the payload can be queued.
                    return True
                self._starting = True
                try:
                    self.listener.start()
                    self.workers.start()
                except RuntimeError:  # interpreter shutting down: no new threads
                    return False
                finally:
                    self._starting = False
                self._started = True
                self._drain_at_multiprocessing_exit()
            return True

    # -- threads that end on an error (Supervisor) ---------------------------------------------

    def fault(self, what: str, error: BaseException) -> None:
        self.reporter.fault(what, error)

    def thread_died(self, name: str, error: BaseException) -> None:
        """Report it and have the next submit (or flush, or close) start a replacement:
        swapping what submit calls costs the hot path nothing, where checking the threads on
        every call would not."""
        self.reporter.fault(f"the thread {name} ended; the next payload starts a new one", error)
        self._put = self._replace_then_put

    def _replace_then_put(self, payload: QueuedPayload) -> None:
        self._replace_ended_threads()
        self.queue.put(payload)

    def _replace_ended_threads(self) -> None:
        """Start a new thread for each one that ended on an error. Cheap when none did."""
        with self._state_lock:
            self._put = self.queue.put  # first: a thread ending from now on swaps it again
            if self._started and self._pid == os.getpid():
                try:
                    self.listener.replace_if_ended()
                    self.workers.replace_ended()
                except RuntimeError:  # interpreter shutting down: the exit drain takes over
                    pass

    def _drain_at_multiprocessing_exit(self) -> None:
        """A fork-started multiprocessing child ends with os._exit(), which skips atexit; its
        finalizers still run, so the exit drain is registered there too (close is idempotent)."""
        mp = sys.modules.get("multiprocessing")
        if mp is not None and mp.parent_process() is not None:
            import multiprocessing.util

            multiprocessing.util.Finalize(None, self.close, exitpriority=100)

    def _not_kept(self, payloads: List[Payload], error: Optional[InteraktError]) -> None:
        """The listener could not hand these to the backlog: ``error`` (the backlog failed), or
        when None, the outbox is full or shutdown has taken stock already."""
        self.backlog.count_failed(len(payloads))
        if error is None:
            error = (
                DeliveryError(_CLOSED, "closed") if self._ending
                else QueueFullError("outbox full; payload dropped")
            )
        for payload in payloads:
            self.report_unsent(error, payload.on_error_arg())

    # -- flush, close, fork -------------------------------------------------------------------

    def _own_thread(self) -> bool:
        current = threading.current_thread()
        return current is self.listener.thread or current in self.workers.threads

    def _running_here(self) -> bool:
        """The sender runs, in this process: there is something to wait for."""
        return self._started and not self.settings.sync_mode and self._pid == os.getpid()

    def flush(self, timeout: Optional[float] = None) -> FlushResult:
        """Wait, at most ``timeout`` (default shutdown_timeout), until everything queued before
        the call is delivered or failed; return the outcomes of what was queued since the
        previous flush (true only when all of it was delivered)."""
        if timeout is None:
            timeout = self.settings.shutdown_timeout
        if self._closed or not self._running_here():
            return FlushResult()  # nothing of this process is queued
        if self._own_thread():  # on_error on a sender thread: waiting would wait for itself
            return FlushResult(pending=self.pending())
        self._replace_ended_threads()  # or what they held up would wait for the next log call
        marker = FlushMarker(ahead=self.queue.qsize())
        self.queue.put(marker)
        marker.done.wait(timeout)
        return self.backlog.result(marker, self.queue.qsize())

    def pending(self) -> int:
        """Payloads queued and not finished yet (approximate while threads move them)."""
        return self.queue.qsize() + len(self.backlog) + self.backlog.in_flight

    def close(self, timeout: Optional[float] = None) -> bool:
        """Deliver what is queued, stop the threads, and report (or keep in the outbox) what is
        left; True when nothing was left. ``timeout`` is a hard bound; without it the close
        goes on while payloads are being delivered and gives up after shutdown_timeout without
        any (see ``_lifecycle.drain``). Idempotent; an interrupted close is resumed by the next
        close or by the exit drain."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = _lifecycle.drain([self], deadline=deadline, final=False)
        return left.undelivered == 0 and left.out == 0

    def begin_close(self) -> Optional[FlushMarker]:
        """Refuse new payloads and mark the end of what is queued: the returned marker is done
        once all of it is finished. A close already under way returns its marker again (so an
        interrupted close resumes); after a close that left requests out, a new marker is done
        when they are answered. None once the pipeline has ended."""
        with self._state_lock:
            if self._ended:
                return None
            if self._closing is None:
                self._closed = True
                self._closing = FlushMarker()
                if self._running_here() and not self._own_thread():
                    self._replace_ended_threads()  # to deliver what they held up
                    self.queue.put(self._closing)
                else:  # nothing to wait for, or we are the thread that would do the work
                    self._closing.done.set()
            elif self._requests_out and self._closing.done.is_set():
                self._closing = FlushMarker()
                self.backlog.mark_sending(self._closing)
            closing = self._closing
        if self._requests_out:
            self.backlog.reap()  # a worker that gave up before sending settles nothing
        return closing

    def end_close(self, why: str, grace: float, final: bool) -> Undelivered:
        """Stop the threads and settle what is left: keep it in the outbox, or report it as not
        delivered because ``why``. Requests already out get ``grace`` seconds to answer (and
        count as delivered when they do); after that, unless ``final`` (the process is about
        to end), they stay with their workers, which count or report the answer, and the next
        drain (the exit's, at the latest) settles them. Re-entrant (a signal handler may drain
        again while this runs): whoever comes later helps report what is left, nothing is
        reported twice."""
        with self._state_lock:
            if self._ended:
                return Undelivered()
            take = (self._requests_out or not self._ending) and not self._taking
            if take:
                self._ending = self._taking = True
                self._taker = threading.get_ident()
                self._stock_taken.clear()
        ended = Undelivered()
        if take:
            try:
                ended = self._take_stock(why, grace, final)
            finally:
                self._taking = False
                self._stock_taken.set()
        elif self._taking and self._taker != threading.get_ident():
            self._stock_taken.wait(_STOCK_WAIT)  # another thread is taking stock right now
        self._report_unreported(wait_for_others=final)
        with self._state_lock:
            if self._ended or self._taking or self._requests_out:
                return ended
            self._ended = True
        _lifecycle.unregister(self)
        self.backlog.close()
        self.transport.close()
        if self.shared_limit is not None:
            self.shared_limit.close()
        return ended

    def _report_unreported(self, wait_for_others: bool) -> None:
        """Report what stock-taking left in ``_unreported``, together with any other thread
        doing the same (each payload is popped once). ``wait_for_others``: the process ends
        next, so wait (bounded) until the other threads' on_error calls have returned too."""
        me = threading.get_ident()
        with self._reporting_done:
            self._reporters[me] = self._reporters.get(me, 0) + 1
        try:
            while True:
                try:
                    error, payload = self._unreported.popleft()
                except IndexError:
                    break
                self.report_unsent(error, payload.on_error_arg())
        finally:
            with self._reporting_done:
                self._reporters[me] -= 1
                if not self._reporters[me]:
                    del self._reporters[me]
                self._reporting_done.notify_all()
        if wait_for_others:
            with self._reporting_done:
                self._reporting_done.wait_for(
                    lambda: not (self._reporters.keys() - {me}), _STOCK_WAIT
                )

    @property
    def finished_count(self) -> int:
        """Payloads delivered or failed for good so far; a drain watches it for progress."""
        return self.backlog.finished_count

    def _take_stock(self, why: str, grace: float, final: bool) -> Undelivered:
        """Stop everything; what is left goes to the outbox or to ``_unreported``, except the
        requests out when not ``final``."""
        unfinished = Unfinished([], [])
        if self._pid == os.getpid() and (self._started or self._requests_out):
            if self._started:
                listener_thread = self.listener.thread
                self.listener.stop(_LISTENER_STOP)
                if listener_thread is not None and listener_thread.is_alive():
                    # still holding a batch (blocked, say, by the lock of a flush this close
                    # interrupted from a signal handler): it reports it once free; the exit
                    # waits for that rather than end the process under it
                    _lifecycle.wait_for_at_exit(listener_thread)
                self._stop.set()  # workers end after the payload in hand
                self.backlog.stop_taking()
                self.flow.stop()  # workers waiting to send give up; requests out may answer
                self._started = False  # a later submit finds the pipeline closed and refuses
            # Workers that were waiting to send give up at once: a moment to end tells them
            # from those with a request out (a later drain reaps any still slower).
            self.workers.join(time.monotonic() + max(grace, _GIVE_UP_TIME))
            if not final:
                with self._state_lock:
                    self._requests_out = True  # for now: the last answer (_answered) clears it
            unfinished = self.backlog.stop(
                keep_sending=not final, on_stranded=self._stranded, on_idle=self._answered
            )
        left_out = [] if final else unfinished.sending
        if not left_out:
            self._requests_out = False
        sending = [] if left_out else unfinished.sending
        taken_back = len(unfinished.waiting) + len(sending)
        waiting = unfinished.waiting + self._drain_queue(taken_back)
        lost_waiting = self.backlog.keep_or_return(waiting)
        lost_sending = self.backlog.keep_or_return(sending)
        lost = DeliveryError(
            f"not delivered: {why}; payload lost (configure an outbox to keep such payloads)",
            "shutdown",
        )
        unknown = DeliveryError(
            f"no answer from the API yet when {why}: it may or may not have recorded this "
            "payload", "shutdown",
        )
        self._unreported.extend((lost, payload) for payload in lost_waiting)
        self._unreported.extend((unknown, payload) for payload in lost_sending)
        # What stays in an outbox: also its rows that were never loaded into memory.
        kept = len(self.backlog) if self.settings.outbox is not None else 0
        return Undelivered(
            lost=len(lost_waiting) + len(lost_sending), kept=kept, out=len(left_out)
        )

    def _stranded(self, payload: Payload) -> None:
        """A payload a close left with its worker will not be sent (again): its request failed
        and wants a retry, or its worker gave up before sending. Keep it in the outbox, or
        report it."""
        for lost in self.backlog.keep_or_return([payload]):
            self.report_unsent(
                DeliveryError(
                    "not delivered: the handler closed before this payload could be sent "
                    "(again); payload lost (configure an outbox to keep such payloads)",
                    "shutdown",
                ),
                lost.on_error_arg(),
            )

    def _answered(self) -> None:
        """The last request a close left out has its outcome: finish closing (release the
        connections, leave the exit hook's list), on the worker that settled it."""
        with self._state_lock:
            self._requests_out = False
        try:
            self.end_close("the handler closed", 0.0, final=True)
        except Exception:  # pragma: no cover - a bug must not end the worker that got here
            logger.exception("interakt-logging: finishing a close failed")

    def _drain_queue(self, taken_back: int) -> List[Payload]:
        """Empty the queue after the listener stopped; release the flush markers found there."""
        left: List[Payload] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return left
            if isinstance(item, FlushMarker):
                self.backlog.release_unplaced(item, len(left))
            elif item is not None:
                left.append(Payload(*item))

    def after_fork(self) -> None:
        """In a forked child: forget the parent's queue, threads and connections; start anew
        on first use. The parent's payloads stay the parent's to deliver."""
        self._state_lock = threading.RLock()
        if not self._closed:
            self._build()

    def stats(self) -> Dict[str, Any]:
        values: Dict[str, Any] = self.counters.snapshot()
        values["queue_depth"] = self.queue.qsize() + len(self.backlog)
        values["in_flight"] = self.backlog.in_flight
        values["circuit"] = self.flow.state
        values["pace"] = self.flow.pace
        values["requests_in_flight"] = self.flow.in_flight
        values["in_flight_limit"] = self.flow.in_flight_limit
        values["sender_threads"] = len(self.workers.threads)
        return values
