"""How many requests may be in flight at once: an AIMD window, as TCP's congestion window.

To deliver ``r`` events/s over a round trip of ``t`` seconds takes ``r * t`` requests in
flight, and neither is known in advance. The window grows while it is what holds requests back
(every slot busy when an answer comes: slow start, one more per accepted answer, until the
first sign of congestion; then one more per window's worth of answers) and shrinks by a factor
on a 429 or a timeout, once per round trip. ``workers`` is its ceiling. Like ``_pacing`` it
neither locks nor sleeps; ``FlowControl`` does both.
"""

from __future__ import annotations

import math

START = 4  # requests in flight before anything is known: enough for a fast API to start well
DECREASE = 0.75


class InFlightWindow:
    """The number of requests allowed in flight, between 1 and ``ceiling``."""

    def __init__(self, ceiling: int, start: int = START) -> None:
        self.ceiling = ceiling
        self._window = float(min(ceiling, start))
        self._slow_start = True
        self._shrunk_at = float("-inf")
        self.in_flight = 0

    @property
    def limit(self) -> int:
        return max(1, math.floor(self._window))

    def has_room(self) -> bool:
        return self.in_flight < self.limit

    def started(self) -> None:
        self.in_flight += 1

    def ended(self, accepted: bool) -> None:
        """A request ended without a sign of congestion; ``accepted`` when the API took it."""
        full = self.in_flight >= self.limit
        self.in_flight -= 1
        if accepted and full and self._window < self.ceiling:
            self._window += 1.0 if self._slow_start else 1.0 / self._window
            self._window = min(self._window, float(self.ceiling))

    def congested(self, sent_at: float, now: float) -> bool:
        """A request sent at ``sent_at`` ended in a 429 or a timeout: shrink, at most once per
        round trip (answers to requests sent before the last shrink do not count). True if
        the window shrank."""
        self.in_flight -= 1
        if sent_at < self._shrunk_at:
            return False
        self._slow_start = False
        self._shrunk_at = now
        self._window = max(1.0, self._window * DECREASE)
        return True
