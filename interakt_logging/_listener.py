"""The listener: one thread that drains the handler's queue into the backlog, a batch at a time.

It moves payloads from the queue into the backlog a batch at a time (one lock round-trip, or one
outbox transaction, per batch), waits while the backlog has no room, and places flush markers.

No payload and no failing part ends the thread: an exception is reported with the payloads it
concerns or, concerning none, as a fault, and the thread goes on. Should it end anyway (a
BaseException, such as ``sys.exit()`` in ``on_error``), what it held is reported, its
``Supervisor`` hears of it, and the next payload submitted starts a replacement.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, List, Optional

from ._backlog import Backlog, FlushMarker
from ._errors import InteraktError, internal_error
from ._payload import Payload
from ._report import Supervisor

_POLL = 0.25  # how often the idle thread looks at the stop flag; not a latency
_FAULT_PAUSE = 0.05  # after a fault that concerned no payload: no busy loop on a broken part

# What the listener could not store, and why: None for "not kept" (a full outbox, shutdown).
NotKept = Callable[[List[Payload], Optional[InteraktError]], None]


class PayloadListener:
    """Drains the handler's queue into the backlog on its own thread; sees payloads and flush
    markers, never LogRecords. ``None`` on the queue is the sentinel that ``stop`` puts there;
    nothing else ever puts ``None`` on it.

    Not a ``logging.handlers.QueueListener``: that one takes one record at a time and hands it
    to handlers (``dequeue``, ``prepare``, ``handle``), blocking on the queue with no timeout.
    This one takes a batch per backlog round-trip, first waits for the backlog to have room,
    places flush markers between batches, and wakes up to see a stop flag and to survive
    faults; none of those hooks fit, so it would override every part but the sentinel.
    """

    def __init__(
        self,
        q: queue.SimpleQueue[Any],
        backlog: Backlog,
        batch_size: int,
        on_not_kept: NotKept,
        supervisor: Supervisor,
    ) -> None:
        self._queue = q
        self.backlog = backlog
        self.batch_size = batch_size
        self.drained = threading.Event()
        self._on_not_kept = on_not_kept
        self._supervisor = supervisor
        self._stopping = False
        self._batch: List[Payload] = []  # taken from the queue, not yet stored nor reported
        self._ended = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the thread. RuntimeError when the interpreter exits (then none was started)."""
        thread = threading.Thread(target=self._run, name="interakt-logging-listener", daemon=True)
        thread.start()
        self._thread = thread

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def replace_if_ended(self) -> None:
        """Start a new thread if the last one ended on an error."""
        if self._ended:
            self._ended = False
            self.start()

    def _run(self) -> None:
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
                if item is None:  # the sentinel: stop() is waiting
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
            self._queue.put(None)  # the sentinel: wakes the thread at once
            if thread is not threading.current_thread():  # close() from on_error, say
                thread.join(timeout)
            self._thread = None
