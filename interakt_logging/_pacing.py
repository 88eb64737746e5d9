"""Client-side pacing: how many requests per second this process sends.

Interakt limits calls per account and answers 429 past it, with no Retry-After. Each process
finds its share of that limit alone, the way botocore's adaptive retry mode does: a token bucket
whose rate is cut on a 429 and grows back along a CUBIC curve while calls are accepted. Unlike
botocore, it cuts to 85% of the rate the API actually *accepted* from it over the last second
(its share right now; the SRE book's client-side throttling measures the same thing), so it
lands near its share at once instead of multiplying its rate by 0.7 per 429; it cuts at most
once a second, not once per 429 of a burst; it owes what a burst got accepted ahead of the new
pace, so it does not keep sending into a window that burst filled; its curve is scaled to the
rate (the same shape at 2/s and at 200/s); and its bucket holds one token, so it never bursts
into a sliding window.

Nothing here locks, sleeps or logs: every method takes the time, ``FlowControl`` holds the
lock, does the waiting and logs a change of pace (``take_news``) once it has let go of the lock,
and tests drive it all with a fake clock.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Deque, NamedTuple, Optional

Clock = Callable[[], float]
"""Seconds on a monotonic clock: ``time.monotonic``, or a fake one in tests."""

MONOTONIC: Clock = time.monotonic

MIN_RATE = 0.5  # requests/s: the slowest pace, so a throttled process still probes now and then


class TokenBucket:
    """At most ``rate`` takes per second, one token of capacity (strict spacing, no burst);
    ``rate`` None takes without limit."""

    def __init__(self, rate: Optional[float], now: float) -> None:
        self._rate = rate
        self._tokens = 1.0
        self._refilled = now

    @property
    def rate(self) -> Optional[float]:
        return self._rate

    def set_rate(self, rate: Optional[float], now: float) -> None:
        self._refill(now)  # what accrued so far accrued at the old rate
        self._rate = rate

    def take(self, now: float) -> float:
        """Take a token and return 0.0, or return the seconds until one is there."""
        if self._rate is None:
            return 0.0
        self._refill(now)
        if self._tokens >= 1.0 - 1e-9:  # rounding: waiting the time returned must be enough
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def charge(self, tokens: float, now: float) -> None:
        """Take ``tokens`` more than there are (a debt the rate pays off before the next take)."""
        self._refill(now)
        self._tokens -= tokens

    def _refill(self, now: float) -> None:
        if self._rate is not None:
            self._tokens = min(1.0, self._tokens + max(0.0, now - self._refilled) * self._rate)
        self._refilled = now


class RateMeter:
    """Events per second over the trailing ``window`` seconds (a young meter still divides by
    the whole window: it under-counts rather than guess from a burst)."""

    def __init__(self, window: float = 1.0) -> None:
        self._window = window
        self._times: Deque[float] = collections.deque()

    def record(self, now: float) -> None:
        self._times.append(now)
        self._forget(now)

    def rate(self, now: float) -> float:
        return self.count(now) / self._window

    def count(self, now: float) -> int:
        """Events in the window, and (``oldest``) when the first of them happened."""
        self._forget(now)
        return len(self._times)

    @property
    def oldest(self) -> float:
        return self._times[0] if self._times else float("nan")

    def _forget(self, now: float) -> None:
        times = self._times
        while times and times[0] <= now - self._window:
            times.popleft()


class CubicRate:
    """The rate to go on with since the last cut: from ``start`` up a CUBIC curve (as in TCP and
    botocore) that flattens at ``plateau`` after ``recovery`` seconds, then probes above it
    faster and faster. Its constant scales with the rates, so the curve has the same shape at
    2/s and at 200/s: eight processes sharing 20/s probe as hard together as one alone. When
    the share is unknown (``doubling``), the rate also doubles every second, as TCP's slow
    start does, until the next cut tells it more."""

    PROBE = 0.15  # the least climb, as a share of the plateau, that the curve is scaled for

    def __init__(self, recovery: float = 2.0) -> None:
        self._recovery = recovery
        self._start = 0.0
        self._plateau = 0.0
        self._scale = 0.0
        self._cut_at = 0.0
        self._flat_at = 0.0
        self._doubling = False

    def restart(self, start: float, plateau: float, now: float, doubling: bool = False) -> None:
        rise = plateau - start
        self._start = start
        self._plateau = plateau
        self._scale = max(rise, self.PROBE * plateau) / self._recovery**3
        self._cut_at = now
        self._flat_at = now + (rise / self._scale) ** (1 / 3)
        self._doubling = doubling

    def at(self, now: float) -> float:
        rate = self._plateau + self._scale * (now - self._flat_at) ** 3
        if self._doubling:
            rate = max(rate, self._start * 2.0 ** (now - self._cut_at))
        return rate


class PaceNews(NamedTuple):
    """A change of pace worth a debug line: the new ``rate`` and ``why`` (429 or accepted)."""

    rate: float
    why: str


class AdaptivePace:
    """This process's request rate: unlimited (or ``ceiling``, the ``rate_limit`` setting)
    until the first 429, then found by cutting on 429s and growing on accepted calls. Growth is
    capped at twice the rate actually sent, so a quiet spell does not bank a rate the API
    never accepted; an accepted call never lowers the pace."""

    CUT = 0.85  # on a 429, to this much of the rate accepted; back to all of it in 2 s
    ROUND = 1.0  # seconds: at most one cut per round, the span the accepted rate is taken over

    def __init__(self, ceiling: Optional[float], now: float) -> None:
        self._ceiling = ceiling
        self._bucket = TokenBucket(ceiling, now)
        self._curve = CubicRate()
        self._sent = RateMeter(self.ROUND)
        self._accepted = RateMeter(self.ROUND)
        self._adaptive = False
        self._cut_at = float("-inf")
        self._told: Optional[float] = ceiling  # the pace last announced
        self._news: Optional[PaceNews] = None  # a change worth announcing, not yet taken

    @property
    def rate(self) -> Optional[float]:
        """Requests per second now; None when not limited."""
        return self._bucket.rate

    def take(self, now: float) -> float:
        """Take the right to send one request (0.0), or the seconds until it comes."""
        wait = self._bucket.take(now)
        if wait == 0.0:
            self._sent.record(now)
        return wait

    def accepted(self, now: float) -> None:
        self._accepted.record(now)
        if self._adaptive:
            grown = min(self._curve.at(now), 2 * self._sent.rate(now))
            self._set(max(grown, self._bucket.rate or MIN_RATE), now, "accepted")

    def throttled(self, sent_at: float, now: float) -> bool:
        """A 429 for a request sent at ``sent_at``: cut the rate, once per round (a request
        sent before the last cut was sent at the old rate and says nothing new). True if cut.

        The rate accepted over the last round is this process's share of the account's limit
        right now: the pace drops a little below it, climbs back to it and then probes above
        it. When nothing was accepted (others took the whole window), the share is unknown:
        the pace drops to the minimum and climbs back towards where it was."""
        if sent_at < self._cut_at or now < self._cut_at + self.ROUND:
            return False
        accepted = self._accepted.count(now)
        if accepted:
            share = accepted / self.ROUND
            start = max(self.CUT * share, MIN_RATE)
        else:  # others took the whole window: this process's share is unknown
            start = MIN_RATE
            share = self.CUT * (self._bucket.rate or self._sent.rate(now))
        self._adaptive = True
        self._cut_at = now
        self._curve.restart(start, max(share, start), now, doubling=not accepted)
        self._set(start, now, "429")
        # What was accepted faster than the new pace (a burst at start-up, say) still fills
        # the API's window: owe it, so the pace resumes once that burst has aged out of it.
        ahead = accepted - 1 - start * (now - self._accepted.oldest) if accepted else 0.0
        if ahead > 0:
            self._bucket.charge(ahead, now)
        return True

    def _set(self, rate: float, now: float, why: str) -> None:
        if self._ceiling is not None:
            rate = min(rate, self._ceiling)
        self._bucket.set_rate(rate, now)
        last = self._told
        if last is None or why == "429" or abs(rate - last) >= 0.1 * last:
            self._told = rate
            self._news = PaceNews(rate, why)

    def take_news(self) -> Optional[PaceNews]:
        """The last change worth announcing (a cut, or 10% since the last one told), once: the
        caller logs it after releasing its lock, since a log call runs the app's handlers."""
        news, self._news = self._news, None
        return news
