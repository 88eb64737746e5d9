"""Tags carry phone numbers and traits: once sent, other handlers see a summary, not the values.

An InteraktHandler replaces each tag it handled with a ``RedactedTag``: a ``str`` such as
``<interakt_event sent>`` that JSON formatters, Sentry and structlog's ``ExtraAdder`` print as
that string, while the original stays on it (not on another record attribute, which those would
print) for a second InteraktHandler on the same record, a second account. Pickling or copying
one gives the plain summary: the values do not travel to a socket or queue listener.
``RedactTags`` does the same, as a ``logging.Filter``, for handlers that run before ours.
"""

from __future__ import annotations

import logging
from typing import Any

from ._payload import EVENT_TAG, USER_TAG

_TAGS = (EVENT_TAG, USER_TAG)


class RedactedTag(str):
    """The summary other handlers see; ``tag`` is the original, for the next InteraktHandler."""

    tag: Any

    def __reduce__(self) -> Any:
        return str, (str(self),)


def original(value: Any) -> Any:
    """The tag as logged, whether or not a handler or filter has redacted it already."""
    return value.tag if type(value) is RedactedTag else value


def redact(d: dict[str, Any], outcome: str) -> None:
    """Replace the tags in a record's ``__dict__`` by ``<name outcome>`` summaries."""
    for name in _TAGS:
        if name in d:
            summary = RedactedTag(f"<{name} {outcome}>")
            summary.tag = original(d[name])
            d[name] = summary


class RedactTags(logging.Filter):
    """A filter for handlers that run before an InteraktHandler, or on loggers without one:
    they see ``<interakt_user redacted>`` instead of the tag's values, and an InteraktHandler
    after them still sends the original. Never drops a record.

    ``logging.getLogger("shop").addFilter(RedactTags())``, or in a dictConfig:
    ``"filters": {"redact": {"()": "interakt_logging.RedactTags"}}``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        if EVENT_TAG in d or USER_TAG in d:
            redact(d, "redacted")
        return True
