"""Flow control shared by all sending workers: when the next request may go.

Four things hold a request back, checked in this order: a Retry-After pause (one 429 with
Retry-After pauses every worker, so it does not become N workers' 429s); the circuit breaker
(when requests keep failing as a whole, network errors or 5xx, workers stop sending and one
probe goes out after a growing delay; the first answer closes it; failures while it is open do
not use up the payloads' own retries); the window of requests in flight (``_concurrency``); and
the pace (``_pacing``). The decision (``poll``) never blocks and reads a clock it is given, so
tests follow the breaker's schedule exactly; ``acquire`` waits on it.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

from ._concurrency import InFlightWindow
from ._pacing import MONOTONIC, AdaptivePace, Clock, PaceNews
from ._shared_limit import Reservation

logger = logging.getLogger("interakt_logging")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class Permit(enum.Enum):
    """What ``acquire`` grants."""

    REQUEST = "request"  # send
    PROBE = "probe"  # send the one request that tests an open breaker
    STOPPED = "stopped"  # do not send: stopping, or past the deadline


@dataclass(frozen=True)
class Wait:
    """Not yet: ask again after ``seconds``, or when woken if None (a probe or a slot).
    ``for_pace``: what is awaited is the pace's next token."""

    seconds: Optional[float]
    for_pace: bool = False


class SharedSchedule(Protocol):
    """A schedule of slots shared by every process of an account (``_shared_limit``)."""

    def reserve(self) -> Optional[Reservation]:
        """The next slot, or None when the schedule is out of reach (pace alone then)."""


def _jitter() -> float:
    return random.uniform(0.8, 1.2)


class FlowControl:
    """Decides when a worker may send. All methods are thread-safe."""

    def __init__(
        self,
        rate_limit: Optional[float] = None,
        max_in_flight: int = 8,
        failure_threshold: int = 5,
        probe_delay: float = 0.5,
        max_probe_delay: float = 15.0,
        clock: Clock = MONOTONIC,
        jitter: Callable[[], float] = _jitter,
        shared: Optional[SharedSchedule] = None,
    ) -> None:
        self.clock = clock
        self._shared = shared
        self._jitter = jitter
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # senders waiting for this process's decision
        # Senders that hold a permit and sleep until their shared slot: a condition of their
        # own, or the single wake-up an answer gives would go to them and be lost.
        self._slot_sleepers = threading.Condition(lock)
        self._stopping = False
        self._pause_until = float("-inf")
        self._failures = 0
        self._threshold = failure_threshold
        self._state = CLOSED
        self._first_probe_delay = probe_delay
        self._probe_delay = probe_delay
        self._max_probe_delay = max_probe_delay
        self._next_probe = 0.0
        self._pace = AdaptivePace(rate_limit, clock())
        self._window = InFlightWindow(max_in_flight)
        self._pacer: Optional[int] = None  # the thread waiting for the pace's next token

    @property
    def state(self) -> str:
        return self._state

    @property
    def pace(self) -> Optional[float]:
        """Requests per second this process holds itself to now; None when unpaced."""
        return self._pace.rate

    @property
    def in_flight(self) -> int:
        return self._window.in_flight

    @property
    def in_flight_limit(self) -> int:
        return self._window.limit

    def poll(self) -> Union[Permit, Wait]:
        """Decide now, without blocking. A REQUEST or PROBE is granted: report its outcome."""
        with self._cond:
            return self._decide(self.clock())

    def acquire(self, deadline: Optional[float] = None) -> Permit:
        """Block until a request may go, or STOPPED when stopping or past ``deadline``
        (on ``clock``). With a shared schedule, the request also waits for its slot there
        (asked without holding the lock: a slow store holds up only this sender)."""
        permit = self._acquire_here(deadline)
        if permit is Permit.STOPPED or self._shared is None:
            return permit
        while True:
            reservation = self._shared.reserve()
            if reservation is None:
                return permit  # out of reach: this process's own pace decided alone
            if not self._sleep(reservation.wait, deadline):
                self.released(probe=permit is Permit.PROBE)
                return Permit.STOPPED
            if reservation.held:
                return permit

    def _sleep(self, seconds: float, deadline: Optional[float]) -> bool:
        """Wait ``seconds`` unless stopping or ``deadline`` comes first; True if waited."""
        with self._slot_sleepers:
            until = self.clock() + seconds
            while not self._stopping:
                now = self.clock()
                if deadline is not None and now >= deadline:
                    return False
                if now >= until:
                    return True
                end = until if deadline is None else min(until, deadline)
                self._slot_sleepers.wait(end - now)
            return False

    def _acquire_here(self, deadline: Optional[float]) -> Permit:
        """The decision of this process. One thread at a time waits for the pace's next token,
        the others for it to take that token: at hundreds of requests per second, a wake-up
        per waiting thread per token would cost more CPU than the requests."""
        me = threading.get_ident()
        with self._cond:
            try:
                while True:
                    now = self.clock()
                    if deadline is not None and now >= deadline:
                        return Permit.STOPPED
                    decision = self._decide(now)
                    if isinstance(decision, Permit):
                        return decision
                    wait = decision.seconds
                    if not decision.for_pace:
                        self._leave_pacer(me)
                    elif self._pacer is None or self._pacer == me:
                        self._pacer = me
                    else:
                        wait = None  # the pacer wakes us once it has its token
                    if deadline is not None:
                        wait = deadline - now if wait is None else min(wait, deadline - now)
                    self._cond.wait(wait)
            finally:
                self._leave_pacer(me)

    def _leave_pacer(self, me: int) -> None:
        if self._pacer == me:
            self._pacer = None
            self._cond.notify()  # the next in line waits for the next token

    def _decide(self, now: float) -> Union[Permit, Wait]:
        if self._stopping:
            return Permit.STOPPED
        if now < self._pause_until:
            return Wait(self._pause_until - now)
        if self._state == HALF_OPEN:
            return Wait(None)  # a probe is out; its outcome wakes us
        if self._state == OPEN and now < self._next_probe:
            return Wait(self._next_probe - now)
        if not self._window.has_room():
            return Wait(None)  # an answer frees a slot and wakes one of us
        wait = self._pace.take(now)
        if wait > 0:
            return Wait(wait, for_pace=True)
        self._window.started()
        if self._state == OPEN:
            self._state = HALF_OPEN
            return Permit.PROBE
        return Permit.REQUEST

    def answered(self, accepted: bool) -> None:
        """A 2xx (``accepted``) or a final 4xx: the server is up; the breaker closes."""
        with self._cond:
            self._window.ended(accepted)
            if accepted:
                self._pace.accepted(self.clock())
            self._close()
            self._cond.notify()
            news = self._pace.take_news()
        _tell(news)

    def released(self, probe: bool) -> None:
        """A request granted but ended with no answer to learn from (a failing part, or it
        gave up waiting for its shared slot): its slot is free again and, if it was the probe,
        another probe may go at once (half-open, everyone would wait for its outcome)."""
        with self._cond:
            self._window.ended(accepted=False)
            if probe and self._state == HALF_OPEN:
                self._state = OPEN
                self._next_probe = self.clock()
                self._cond.notify_all()
            else:
                self._cond.notify()

    def throttled(self, sent_at: float, retry_after: Optional[float]) -> None:
        """A 429: the server is up and busy. With Retry-After the server says when: nobody
        sends until it has passed. Without (Interakt's way), this process slows its pace."""
        with self._cond:
            now = self.clock()
            self._window.congested(sent_at, now)
            if retry_after is None:
                self._pace.throttled(sent_at, now)
            else:
                self._pause_until = max(self._pause_until, now + retry_after)
            self._close()
            self._cond.notify_all()
            news = self._pace.take_news()
        _tell(news)

    def failed(self, sent_at: float, probe: bool, timed_out: bool) -> bool:
        """A network error or 5xx. Returns True when it counts against the payload's own
        retries: only while the breaker stays closed."""
        with self._cond:
            now = self.clock()
            if timed_out:
                self._window.congested(sent_at, now)
            else:
                self._window.ended(accepted=False)
            self._cond.notify()
            if probe:
                self._open(now)
                return False
            if self._state != CLOSED:
                return False
            self._failures += 1
            if self._failures >= self._threshold:
                self._open(now)
                return False
            return True

    def _close(self) -> None:
        self._failures = 0
        if self._state != CLOSED:
            self._state = CLOSED
            self._probe_delay = self._first_probe_delay
            self._cond.notify_all()

    def _open(self, now: float) -> None:
        if self._state == OPEN:
            return
        self._state = OPEN
        self._next_probe = now + self._probe_delay * self._jitter()
        self._probe_delay = min(self._probe_delay * 2, self._max_probe_delay)
        self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._slot_sleepers.notify_all()


def _tell(news: Optional[PaceNews]) -> None:
    """Log a change of pace; called without the lock, as a log call runs the app's handlers."""
    if news is not None:
        logger.debug("interakt-logging: pace %.2f requests/s (%s)", news.rate, news.why)
