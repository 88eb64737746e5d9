"""One rate limit for every process on every machine: a limiter kept in Redis.

Each request reserves the next free slot of one schedule shared through Redis (GCRA, the
"virtual scheduling" form of a token bucket): a Lua script reads Redis's own clock, moves the
key's next free time on by ``1 / rate`` and answers how long this sender must wait for its
slot. One round trip per request, no polling, slots evenly spaced for all processes together
(safe against a sliding-window limit), and no clock skew between machines. The key is a hash
of the API key, never the key.

Only sender threads talk to Redis, with short socket timeouts: a log call never waits on it.
When Redis is unreachable or slow, ``reserve`` answers None, the process goes on with its own
adaptive pace (``_pacing``), warns once, and asks Redis again a little later.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional

logger = logging.getLogger("interakt_logging")

SOCKET_TIMEOUT = 0.25  # seconds: a slower store is treated as down
RETRY_DOWN = 5.0  # seconds before asking a store that failed again
MAX_AHEAD = 2.0  # seconds: never reserve a slot further ahead; wait and ask again

# KEYS[1]: the schedule; ARGV[1]: microseconds between slots; ARGV[2]: the furthest reservation
# (microseconds). Returns the microseconds to wait for the reserved slot, or minus the wait
# when it is too far ahead (nothing reserved).
_RESERVE = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
if free < now then free = now end
local wait = free - now
if wait > tonumber(ARGV[2]) then return -wait end
local interval = tonumber(ARGV[1])
local ttl = math.ceil((wait + interval) / 1000) + 60000  -- ms; a minute past the last slot
redis.call('SET', KEYS[1], tostring(free + interval), 'PX', ttl)
return wait
"""


@dataclass(frozen=True)
class Reservation:
    """Wait ``wait`` seconds; then send (``held``: the slot is this sender's) or ask again
    (the next free slot was too far ahead to reserve)."""

    wait: float
    held: bool


def limiter_key(api_key: str) -> str:
    """The Redis key of an account's schedule: a hash of its API key, never the key."""
    digest = hashlib.sha256(f"interakt-logging:{api_key}".encode()).hexdigest()[:24]
    return f"interakt-logging:rate:{digest}"


def redacted(url: str) -> str:
    """The store's URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class SharedLimit:
    """A Redis-held schedule of ``rate`` requests per second for one API key."""

    def __init__(self, url: str, rate: float, api_key: str) -> None:
        import redis  # the optional extra; checked when the settings are made

        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
        )
        self._script: Any = self._client.register_script(_RESERVE)
        self._key = limiter_key(api_key)
        self._interval_us = max(1, round(1_000_000 / rate))
        self._url = redacted(url)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._warned = False

    def __repr__(self) -> str:
        return f"<SharedLimit {self._url}>"

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def reserve(self) -> Optional[Reservation]:
        """Reserve the next slot, or None when the store is down (go on with the process's
        own pace)."""
        if not self.up:
            return None
        try:
            micros = int(self._script(keys=[self._key],
                                      args=[self._interval_us, int(MAX_AHEAD * 1e6)]))
        except Exception as exc:  # redis-py's errors, and anything from a broken connection
            self._went_down(exc)
            return None
        if micros >= 0:
            return Reservation(micros / 1e6, held=True)
        return Reservation(-micros / 1e6 - MAX_AHEAD / 2, held=False)

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_DOWN
            if self._warned:
                return
            self._warned = True
        logger.warning(
            "interakt-logging: rate_limit_store %s is unreachable or slow (%s); each process "
            "paces itself until it answers again", self._url, type(exc).__name__,
        )

    def close(self) -> None:
        self._client.close()
