"""One payload's way to the API: attempts, retries with backoff, flow control.

Shared by the background workers and by ``sync_mode`` (which runs it on the calling thread), so
both follow one retry policy: network errors and 5xx are retried up to ``max_retries`` times,
every other 4xx is final, and a 429 is no failure at all: the API says *when*, not *whether*.
A throttled payload waits (flow control slows down) and goes again without using up a retry;
in the background only the queue's or outbox's capacity and the exit bound can end that wait.
A sync-mode caller is blocked meanwhile, so there 429s (and failures while the breaker is
open, which use up no retry either) past ``max_retries`` raise after all.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from ._errors import APIError, DeliveryError
from ._flow import FlowControl, Permit
from ._payload import Payload
from ._stats import Counters
from ._transport import NetworkError

BACKOFF_BASE = 0.25
BACKOFF_MAX = 10.0


class Abandoned(Exception):
    """Delivery stopped because the pipeline is shutting down (or a deadline passed)."""


@dataclass(frozen=True)
class Delivered:
    """The API accepted the payload; ``answer`` is its decoded 2xx body."""

    answer: Any


@dataclass(frozen=True)
class TryAgain:
    """Not delivered yet: try again after ``delay`` seconds. ``cause`` is what went wrong."""

    delay: float
    cause: Exception

    @property
    def throttled(self) -> bool:
        return isinstance(self.cause, APIError) and self.cause.status_code == 429


Attempt = Union[Delivered, TryAgain]


class Poster(Protocol):
    """What posts one payload: ``Transport``, or a scripted stand-in in unit tests. Returns the
    decoded 2xx answer; raises APIError for any other status, NetworkError for no answer."""

    def post(self, payload: Payload) -> Any: ...


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Exponential backoff with jitter: about base * 2**(attempt-1), between half and all of it."""
    return min(cap, base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Delivery:
    def __init__(
        self,
        transport: Poster,
        flow: FlowControl,
        counters: Counters,
        max_retries: int,
        stop: Optional[threading.Event] = None,
    ) -> None:
        self.transport = transport
        self.flow = flow
        self._counters = counters
        self._max_retries = max_retries
        self._stop = stop

    def attempt(self, payload: Payload, deadline: Optional[float] = None) -> Attempt:
        """One try, once flow control allows it. Raises APIError (refused, or retries used up
        on 5xx), DeliveryError (network errors outlasting the retries) or Abandoned (stopping,
        or past ``deadline``)."""
        flow = self.flow
        permit = flow.acquire(deadline)
        if permit is Permit.STOPPED:
            raise Abandoned()
        sent_at = flow.clock()
        try:
            answer = self.transport.post(payload)
        except NetworkError as exc:
            counts = flow.failed(sent_at, permit is Permit.PROBE, "Timeout" in exc.kind)
            error: Exception = DeliveryError(f"could not reach the Interakt API: {exc}", exc.kind)
        except APIError as exc:
            error = exc
            if exc.status_code == 429:
                flow.throttled(sent_at, exc.retry_after)
                self._counters.add("throttled")
                return TryAgain(0.0, exc)  # flow control does the waiting, for every worker
            if not exc.retryable:
                flow.answered(accepted=False)  # a 4xx: reachable, and retrying will not help
                raise
            counts = flow.failed(sent_at, permit is Permit.PROBE, timed_out=False)  # 5xx
        except BaseException:  # a bug or a failing part: no answer to learn from
            flow.released(probe=permit is Permit.PROBE)
            raise
        else:
            flow.answered(accepted=True)
            return Delivered(answer)
        if not counts:
            return TryAgain(0.0, error)  # the breaker opened: this does not use up a retry
        payload.attempts += 1
        if payload.attempts > self._max_retries:
            if isinstance(error, DeliveryError):
                raise DeliveryError(
                    f"{error} (gave up after {self._max_retries} retries)", error.reason
                )
            raise error
        self._counters.add("retried")
        return TryAgain(backoff(payload.attempts), error)

    def send(self, payload: Payload, deadline: Optional[float] = None) -> Any:
        """Deliver on this thread, sleeping between tries (sync mode). Returns the answer."""
        free_tries = 0  # tries that used up no retry: 429s, failures while the breaker is open
        while True:
            attempts = payload.attempts
            result = self.attempt(payload, deadline)
            if isinstance(result, Delivered):
                return result.answer
            if payload.attempts == attempts:
                free_tries += 1
                # A caller blocked with no deadline must not wait forever: past max_retries
                # such tries it gets their error; with a deadline (at exit) that bounds the wait.
                if deadline is None and free_tries > self._max_retries:
                    raise result.cause
            if result.delay > 0 and self._sleep(result.delay, deadline):
                raise Abandoned()

    def _sleep(self, seconds: float, deadline: Optional[float]) -> bool:
        """Sleep for a retry; True when interrupted by stopping or the deadline."""
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        if self._stop is not None:
            if self._stop.wait(seconds):
                return True
        else:
            time.sleep(seconds)
        return deadline is not None and time.monotonic() >= deadline
