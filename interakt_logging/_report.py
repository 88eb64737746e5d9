"""Telling the application about dropped and failed payloads: ``on_error`` plus a warning.

Warnings go to the library's own logger ``interakt_logging``: the first occurrence of each
distinct problem (a validation error on one field, an HTTP status, a kind of network error, a
full queue) is logged at once, repeats are counted and summarised at most once per interval, so
a burst of bad events produces one line, not thousands, and an outage tomorrow is still heard of.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Hashable, List, Optional

from ._errors import APIError, DeliveryError, QueueFullError, ValidationError

logger = logging.getLogger("interakt_logging")

REPEAT_INTERVAL = 300.0  # seconds between warnings about the same problem
DROP_INTERVAL = 5.0  # a full queue is news sooner
_MAX_REMEMBERED = 1000


class Reporter:
    def __init__(self, on_error: Optional[Callable[[Exception, Any], Any]]) -> None:
        self._on_error = on_error
        self._lock = threading.Lock()
        # problem -> [time of its last warning, occurrences since]
        self._problems: Dict[Hashable, List[float]] = {}

    def report(self, error: Exception, payload: Any) -> None:
        """Call ``on_error(error, payload)`` (never letting it raise) and warn as above."""
        self._warn(error)
        if self._on_error is not None:
            try:
                self._on_error(error, payload)
            except Exception:
                logger.exception("interakt-logging: the on_error callback raised")

    def _warn(self, error: Exception) -> None:
        key = _problem_key(error)
        interval = DROP_INTERVAL if isinstance(error, QueueFullError) else REPEAT_INTERVAL
        now = time.monotonic()
        with self._lock:
            seen = self._problems.get(key)
            if seen is None:
                if len(self._problems) >= _MAX_REMEMBERED:
                    self._problems.clear()
                self._problems[key] = [now, 0.0]
                repeats = 0
            elif now - seen[0] < interval:
                seen[1] += 1
                return
            else:
                repeats = int(seen[1])
                seen[0], seen[1] = now, 0.0
        more = f" ({repeats} more like it since the last warning)" if repeats else ""
        logger.warning(
            "interakt-logging: %s%s; repeats are summarised every %.0f s, see on_error and "
            "stats()", error, more, interval,
        )


def _problem_key(error: Exception) -> Hashable:
    if isinstance(error, ValidationError):
        return ("validation", error.field.split("[")[0])
    if isinstance(error, APIError):
        return ("api", error.status_code)
    if isinstance(error, DeliveryError):
        return ("delivery", error.reason)
    return (type(error).__name__,)
