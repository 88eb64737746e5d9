"""Telling the application about dropped and failed payloads: ``on_error`` plus a warning.

Warnings go to the library's own logger ``interakt_logging``, once per distinct problem (a
validation error on one field, an HTTP status, a network error type), so a burst of bad events
produces one line, not thousands. Drops for a full queue are summarised every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable, Optional, Set

from ._errors import APIError, DeliveryError, QueueFullError, ValidationError

logger = logging.getLogger("interakt_logging")

DROP_WARNING_INTERVAL = 5.0
_MAX_REMEMBERED = 1000


class Reporter:
    def __init__(self, on_error: Optional[Callable[[Exception, Any], Any]]) -> None:
        self._on_error = on_error
        self._lock = threading.Lock()
        self._warned: Set[Hashable] = set()
        self._drops_unwarned = 0
        self._last_drop_warning = float("-inf")

    def report(self, error: Exception, payload: Any) -> None:
        """Call ``on_error(error, payload)`` (never letting it raise) and warn once per problem."""
        if isinstance(error, QueueFullError):
            self._warn_drop()
        else:
            key = _problem_key(error)
            with self._lock:
                first = key not in self._warned
                if first and len(self._warned) < _MAX_REMEMBERED:
                    self._warned.add(key)
            if first:
                logger.warning(
                    "interakt-logging: %s (further occurrences of this problem are not logged; "
                    "see on_error and stats())", error,
                )
        if self._on_error is not None:
            try:
                self._on_error(error, payload)
            except Exception:
                logger.exception("interakt-logging: the on_error callback raised")

    def _warn_drop(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._drops_unwarned += 1
            if now - self._last_drop_warning < DROP_WARNING_INTERVAL:
                return
            count, self._drops_unwarned = self._drops_unwarned, 0
            self._last_drop_warning = now
        logger.warning(
            "interakt-logging: queue full, dropped %d payload(s) in the last %.0f s "
            "(raise max_queue_size, or check that the API is reachable)",
            count, DROP_WARNING_INTERVAL,
        )


def _problem_key(error: Exception) -> Hashable:
    if isinstance(error, ValidationError):
        return ("validation", error.field.split("[")[0])
    if isinstance(error, APIError):
        return ("api", error.status_code)
    if isinstance(error, DeliveryError):
        return ("delivery", error.reason)
    return (type(error).__name__,)
