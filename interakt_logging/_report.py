"""Telling the application about dropped and failed payloads: ``on_error`` plus a warning.

Warnings go to the library's own logger ``interakt_logging``: the first occurrence of each
distinct problem (a validation error on one field, an HTTP status, a kind of network error, a
full queue) is logged at once, repeats are counted and summarised at most once per interval, so
a burst of bad events produces one line, not thousands, and an outage tomorrow is still heard of.

A warning never carries a tag's values (phone numbers, emails, traits would go to the app's log
files through it): the errors' messages are built without them (see ``_errors``).

Reporting runs wherever a payload is refused: on a sender thread, on the logging thread, inside
a signal handler that logs, inside ``on_error`` itself. So it never raises, never waits for
another report on the same thread, and never calls ``on_error`` from within ``on_error``.
``Supervisor`` is what the pipeline's threads (listener, workers) tell their owner besides.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Dict, Hashable, List, Optional, Protocol

from ._errors import (
    INTERNAL,
    APIError,
    DeliveryError,
    QueueFullError,
    ValidationError,
    describe,
)

logger = logging.getLogger("interakt_logging")

ReportUnsent = Callable[[Exception, Any], None]
"""``Pipeline.report_unsent``: counts and reports a payload that will not be sent; the second
argument is what ``on_error`` receives with the error."""


class Supervisor(Protocol):
    """What the pipeline's threads tell their owner besides the fate of payloads."""

    def fault(self, what: str, error: BaseException) -> None:
        """A failure no payload explains; the thread goes on."""

    def thread_died(self, name: str, error: BaseException) -> None:
        """The thread is ending on ``error``; a replacement is due."""


REPEAT_INTERVAL = 300.0  # seconds between warnings about the same problem
DROP_INTERVAL = 5.0  # a full queue is news sooner
_MAX_REMEMBERED = 1000


class Reporter:
    def __init__(self, on_error: Optional[Callable[[Exception, Any], Any]]) -> None:
        self._on_error = on_error
        # Re-entrant: a signal handler that logs may interrupt this thread while it holds it.
        self._lock = threading.RLock()
        # problem -> [time of its last warning, occurrences since]
        self._problems: Dict[Hashable, List[float]] = {}
        self._in_on_error = threading.local()  # .active on a thread running on_error

    def report(self, error: Exception, on_error_arg: Any) -> None:
        """Warn as above and call ``on_error(error, on_error_arg)``. Never raises an Exception.

        A report made while this thread is inside ``on_error`` (it logged an event that was
        refused too, say to a closed handler) is warned about but not passed to ``on_error``
        again: that would recurse without end."""
        with contextlib.suppress(Exception):  # a broken logging setup: on_error still hears
            self._warn(error)
        on_error = self._on_error
        if on_error is None:
            return
        state = self._in_on_error
        if getattr(state, "active", False):
            self._say_once(
                ("reentrant",), REPEAT_INTERVAL,
                "a payload was refused while on_error was running on the same thread (does "
                "on_error log an event?): on_error is not called again for it, which would "
                "recurse; it is counted in stats()",
            )
            return
        state.active = True
        try:
            on_error(error, on_error_arg)
        except Exception as exc:
            self.fault("the on_error callback raised", exc)
        finally:
            state.active = False

    def fault(self, what: str, error: BaseException) -> None:
        """Log a failure that no payload explains (a bug here, in a callback, or in a part
        such as the backlog) at ERROR with its traceback; repeats are summarised. Never
        raises an Exception."""
        with contextlib.suppress(Exception):  # logging itself is broken: nothing left to tell
            self._say_once(
                ("fault", what, type(error).__name__), REPEAT_INTERVAL,
                f"{what}: {describe(error)}", exc_info=error, level=logging.ERROR,
            )

    def _warn(self, error: Exception) -> None:
        interval = DROP_INTERVAL if isinstance(error, QueueFullError) else REPEAT_INTERVAL
        # the first warning of an internal error carries the traceback of the bug behind it
        internal = isinstance(error, DeliveryError) and error.reason == INTERNAL
        text = str(error)  # never a tag's values: see ValidationError and APIError
        self._say_once(
            _problem_key(error), interval, text,
            suffix="see on_error and stats()", exc_info=error.__cause__ if internal else None,
        )

    def _say_once(
        self,
        key: Hashable,
        interval: float,
        text: str,
        *,
        suffix: str = "",
        exc_info: Optional[BaseException] = None,
        level: int = logging.WARNING,
    ) -> None:
        """Log ``text`` unless ``key`` was logged less than ``interval`` ago (then count it as a
        repeat, told with the next line logged about ``key``)."""
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
        logger.log(
            level, "interakt-logging: %s%s; repeats are summarised every %.0f s%s",
            text, more, interval, f", {suffix}" if suffix else "", exc_info=exc_info,
        )


def _problem_key(error: Exception) -> Hashable:
    if isinstance(error, ValidationError):
        return ("validation", error.field.split("[")[0])
    if isinstance(error, APIError):
        return ("api", error.status_code)
    if isinstance(error, DeliveryError):
        return ("delivery", error.reason)
    return (type(error).__name__,)
