"""One payload's way to the API: attempts, retries with backoff, flow control.

Shared by the background workers and by ``sync_mode`` (which runs it on the calling thread), so
both follow one retry policy: network errors, 5xx and 429 are retried (429 after its
Retry-After), every other 4xx is final.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Optional, Tuple

from ._errors import APIError, DeliveryError
from ._flow import FlowControl
from ._payload import Payload
from ._stats import Counters
from ._transport import NetworkError, Transport

BACKOFF_BASE = 0.25
BACKOFF_MAX = 10.0
RATE_LIMIT_DEFAULT_PAUSE = 1.0


class Abandoned(Exception):
    """Delivery stopped because the pipeline is shutting down (or a deadline passed)."""


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Exponential backoff with jitter: about base * 2**(attempt-1), between half and all of it."""
    return min(cap, base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Delivery:
    def __init__(
        self,
        transport: Transport,
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

    def attempt(self, payload: Payload, deadline: Optional[float] = None) -> Tuple[bool, Any]:
        """One try, once flow control allows it. Returns ``(True, answer)`` when delivered or
        ``(False, delay)`` to try again after ``delay`` seconds. Raises APIError (refused, or
        retries used up on 5xx/429), DeliveryError (network errors outlasting the retries) or
        Abandoned (stopping, or past ``deadline``)."""
        probe = self.flow.acquire(deadline)
        if probe is None:
            raise Abandoned()
        try:
            answer = self.transport.post(payload)
        except NetworkError as exc:
            counts = self.flow.failure(probe)
            error: Exception = DeliveryError(f"could not reach the Interakt API: {exc}", exc.kind)
            wait = backoff(payload.attempts + 1)
        except APIError as exc:
            error = exc
            if exc.status_code == 429:
                self.flow.success()  # the server is up, just busy
                pause = exc.retry_after
                if pause is None:
                    pause = backoff(payload.attempts + 1, RATE_LIMIT_DEFAULT_PAUSE, 60.0)
                self.flow.pause(pause)
                wait = 0.0  # the shared pause does the waiting
                counts = True
            elif exc.retryable:  # 5xx
                counts = self.flow.failure(probe)
                wait = backoff(payload.attempts + 1)
            else:
                self.flow.success()  # a 4xx: reachable, and retrying will not help
                raise
        else:
            self.flow.success()
            return True, answer
        if not counts:
            return False, 0.0  # the breaker opened: this does not use up the payload's retries
        payload.attempts += 1
        if payload.attempts > self._max_retries:
            if isinstance(error, DeliveryError):
                raise DeliveryError(
                    f"{error} (gave up after {self._max_retries} retries)", error.reason
                )
            raise error
        self._counters.add("retried")
        return False, wait

    def send(self, payload: Payload, deadline: Optional[float] = None) -> Any:
        """Deliver on this thread, sleeping between tries (sync mode). Returns the answer."""
        while True:
            delivered, value = self.attempt(payload, deadline)
            if delivered:
                return value
            if value > 0 and self._sleep(value, deadline):
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
