"""Flow control shared by all sending workers: rate-limit pauses, circuit breaker, token bucket.

One 429 pauses every worker until its Retry-After, so it does not become N workers' 429s.
When requests keep failing as a whole (network errors, 5xx), the breaker opens: workers stop
sending, one probe goes out after a growing delay, and the first success closes it again.
Failures while the breaker is open do not use up the payloads' own retries.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Optional

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class FlowControl:
    """Decides when a worker may send. All methods are thread-safe."""

    def __init__(
        self,
        rate_limit: Optional[float] = None,
        failure_threshold: int = 5,
        probe_delay: float = 0.5,
        max_probe_delay: float = 15.0,
    ) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._pause_until = 0.0
        self._failures = 0
        self._threshold = failure_threshold
        self._state = CLOSED
        self._first_probe_delay = probe_delay
        self._probe_delay = probe_delay
        self._max_probe_delay = max_probe_delay
        self._next_probe = 0.0
        self._rate = rate_limit
        self._capacity = 1.0  # no bursts: strict pacing keeps a sliding-window limit safe
        self._tokens = self._capacity
        self._refilled = time.monotonic()

    @property
    def state(self) -> str:
        return self._state

    def acquire(self, deadline: Optional[float] = None) -> Optional[bool]:
        """Block until a request may go. Returns True for a breaker probe, False for a normal
        request, None when stopping or past ``deadline`` (monotonic)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                wait: Optional[float] = None
                probe = False
                if now < self._pause_until:
                    wait = self._pause_until - now
                elif self._state == HALF_OPEN:
                    wait = None  # a probe is out; its outcome wakes us
                elif self._state == OPEN and now < self._next_probe:
                    wait = self._next_probe - now
                else:
                    probe = self._state == OPEN
                    wait = self._take_token(now)
                    if wait is None:
                        if probe:
                            self._state = HALF_OPEN
                        return probe
                if deadline is not None:
                    remaining = deadline - now
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def _take_token(self, now: float) -> Optional[float]:
        if self._rate is None:
            return None
        self._tokens = min(self._capacity, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self._rate

    def success(self) -> None:
        """Any answer from the server (a 2xx, a 4xx, a 429) closes the breaker: it is up."""
        with self._cond:
            self._failures = 0
            if self._state != CLOSED:
                self._state = CLOSED
                self._probe_delay = self._first_probe_delay
                self._cond.notify_all()

    def failure(self, probe: bool) -> bool:
        """Record a network error or 5xx. Returns True when it counts against the payload's
        own retries: only while the breaker stays closed."""
        with self._cond:
            now = time.monotonic()
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

    def _open(self, now: float) -> None:
        if self._state == OPEN:
            return
        self._state = OPEN
        self._next_probe = now + self._probe_delay * random.uniform(0.8, 1.2)
        self._probe_delay = min(self._probe_delay * 2, self._max_probe_delay)
        self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """A 429: nobody sends for ``seconds``."""
        with self._cond:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
