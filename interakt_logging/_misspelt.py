"""Record attributes that look like a tag but are not one (``interakt_events``,
``Interakt_event``): nothing is sent for them, so say so, once per distinct name.

A record logged without ``extra`` has exactly the attributes of a fresh LogRecord; only records
with more are looked at, and only at the attributes after those (a dict keeps insertion order:
``extra``'s come after the constructor's), each distinct name judged once per process.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

from ._payload import EVENT_TAG, USER_TAG

_logger = logging.getLogger("interakt_logging")

_PLAIN = logging.LogRecord("", 0, "", 0, "", (), None).__dict__  # taskName on 3.12+ too
PLAIN_RECORD_SIZE = len(_PLAIN)
FORMATTED_RECORD_SIZE = PLAIN_RECORD_SIZE + 2  # a formatter adds "message" and "asctime"

# Names seen already, misspelt or not: from the start, every record's and what formatters add.
_judged: set[Any] = {*_PLAIN, "message", "asctime"}
# re-entrant: a signal handler that logs may interrupt this thread while it holds it
_judged_lock = threading.RLock()


def check_extras(d: dict[str, Any]) -> None:
    """Warn about any near-miss tag name among the record's extra attributes (first time)."""
    for name in itertools.islice(d, PLAIN_RECORD_SIZE, None):
        if name not in _judged:
            _judge(name)


def _judge(name: Any) -> None:
    with _judged_lock:
        if name in _judged:
            return
        _judged.add(name)
    meant = near_miss(name)
    if meant is not None:
        _logger.warning(
            "interakt-logging: a record has the attribute %r, which is not a tag: nothing is "
            "sent for it. Did you mean %r?", name, meant,
        )


def near_miss(name: Any) -> str | None:
    """The tag ``name`` was probably meant to be, or None."""
    if not isinstance(name, str):
        return None
    folded = name.casefold().replace("-", "_").strip()
    for tag in (EVENT_TAG, USER_TAG):
        if _distance(folded, tag) <= 2:
            return tag
    if "interakt" in folded or "interact_" in folded:
        return EVENT_TAG if "event" in folded else USER_TAG
    return None


def _distance(a: str, b: str) -> int:
    """Levenshtein distance, giving up (returning 3) once it is over 2."""
    if abs(len(a) - len(b)) > 2:
        return 3
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > 2:
            return 3
        previous = current
    return previous[-1]
