"""InteraktProcessor: the structlog front door.

structlog is an optional extra, so nothing here imports it: a processor is just a callable
``(logger, method_name, event_dict) -> event_dict``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import MutableMapping
from typing import Any, Optional

from ._errors import InteraktError, ValidationError, _raised
from ._handler import InteraktHandler, names_no_event, path_and_tag
from ._payload import EVENT_TAG, USER_TAG, parse_created_at

EventDict = MutableMapping[str, Any]


class InteraktProcessor:
    """Sends event dicts tagged ``interakt_user`` / ``interakt_event`` through ``handler``.

    Use it in ``structlog.configure(processors=[..., InteraktProcessor(handler), renderer])``::

        log.info("Order Placed", interakt_event={"user_id": "42", "traits": {"total": 10}})

    The tag means what it means on a log record: the event name defaults to the event dict's
    ``event``, and ``createdAt`` to its ``timestamp`` (epoch seconds or ISO-8601, as a
    ``TimeStamper`` puts it; naive means UTC) or else now. The payload goes into the handler's
    queue and sender. The tag is then removed from the event dict, so renderers do not write
    phone numbers and traits into log files, unless ``keep=True``. Never raises: bad input and
    (in sync mode) a refused call are reported like a bad log record's (counted, ``on_error``,
    one warning). Which events reach the processor is structlog's business (a filtering bound
    logger, say); the handler's level and filters apply to log records only. Anything but a
    mapping (the processor placed after a renderer) passes through untouched.
    """

    __slots__ = ("handler", "keep")

    def __init__(self, handler: InteraktHandler, keep: bool = False) -> None:
        self.handler = handler
        self.keep = keep

    def __repr__(self) -> str:
        return f"InteraktProcessor({self.handler!r}, keep={self.keep})"

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        if type(event_dict) is not dict and not isinstance(event_dict, MutableMapping):
            return event_dict  # placed after a renderer: a str or bytes is not ours to read
        if EVENT_TAG not in event_dict and USER_TAG not in event_dict:
            return event_dict
        try:
            self._send_tagged(event_dict)
        except Exception as exc:  # an event dict that breaks while read: bad input, reported
            self.handler.pipeline.report_unsent(
                ValidationError(
                    "event_dict", event_dict,
                    f"an event dict whose tag can be read ({_raised(exc)})",
                ),
                None,
            )
        if not self.keep:
            event_dict.pop(EVENT_TAG, None)
            event_dict.pop(USER_TAG, None)
        return event_dict

    def _send_tagged(self, event_dict: EventDict) -> None:
        try:
            path, tag = path_and_tag(event_dict)  # both tags: one record each, as for records
            default_event = None
            if names_no_event(path, tag):
                default_event = _event_name(event_dict.get("event"))
        except ValidationError as exc:  # found before there is a call: reported as submit would
            # an event tag, either way
            self.handler.pipeline.report_unsent(exc, event_dict[EVENT_TAG])
            return
        with contextlib.suppress(InteraktError):  # reported by submit
            self.handler.submit(
                path, tag, default_event=default_event,
                created=_created_from_timestamp(event_dict.get("timestamp")),
            )


def _event_name(name: Any) -> Optional[str]:
    """The event dict's ``event`` as the default event name, as a renderer writes it (str());
    one whose str() raises is a ValidationError for ``event``."""
    if name is None or type(name) is str:
        return name
    try:
        return str(name)
    except Exception as exc:
        raise ValidationError(
            "event", name, f"an event name, or an event that str() can write ({_raised(exc)})"
        ) from None


def _created_from_timestamp(timestamp: Any) -> float:
    """The event dict's ``timestamp`` as epoch seconds; now when absent or not a time (a custom
    TimeStamper format is the log's business, not a reason to lose the event)."""
    if timestamp is not None:
        try:
            return parse_created_at(timestamp, "timestamp")
        except ValidationError:
            pass
    return time.time()
