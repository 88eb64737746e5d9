"""The exceptions interakt-logging raises or hands to ``on_error``."""

from __future__ import annotations

import math
import re
import reprlib
from typing import Any

import orjson


class InteraktError(Exception):
    """Base class of every error this library raises or reports."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its message and attributes, not by calling ``__init__`` again (which
        takes other arguments than ``args`` holds): an error passed from ``on_error`` in a
        worker process to its parent arrives whole."""
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[InteraktError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ValidationError(InteraktError, ValueError):
    """A tag or call argument is not what the Track API accepts.

    ``field`` names the offending field (``traits.obj`` for nested trait values), ``given`` is
    what the caller passed and ``expected`` says what would have been accepted.

    The message describes ``given`` by its type and size (``got a str of 14 characters``),
    never by its value: a tag holds phone numbers and traits, and this message reaches log
    files (our warnings, an app's ``log.exception``, Sentry). ``given`` keeps the value for the
    application's own use. ``shown=True`` puts a bounded repr of it in the message instead, for
    settings (a timeout, an outbox path), which are configuration, not personal data.
    """

    def __init__(self, field: str, given: Any, expected: str, *, shown: bool = False) -> None:
        self.field = field
        self.given = given
        self.expected = expected
        got = _short_repr(given) if shown else shape(given)
        super().__init__(f"{field}: expected {expected}, got {got}")


class APIError(InteraktError):
    """The Track API refused a request (or answered with something that is not a 2xx).

    ``status_code`` is the HTTP status and ``message`` the server's ``message`` field, or the raw
    body when the answer was not JSON. ``sent`` is the JSON body of the request: the API's
    message may quote it, so the error's own message (and our warning) shows the API's with
    every value sent masked as ``<value>``; ``message`` keeps it whole for the application.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        retry_after: float | None = None,
        *,
        sent: bytes | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after
        hint = " (check the API key: INTERAKT_API_KEY or api_key=)" if status_code == 401 else ""
        shown = message if sent is None else without_values(message, sent)
        super().__init__(f"Interakt API answered {status_code}: {shown}{hint}")

    @property
    def retryable(self) -> bool:
        """5xx and 429 may succeed on a later try; any other 4xx never will."""
        return self.status_code >= 500 or self.status_code == 429


class QueueFullError(InteraktError):
    """The bounded queue was full, so the payload was dropped instead of blocking the caller."""


class DeliveryError(InteraktError):
    """A payload could not be delivered: the network failed past the retries, or the handler
    shut down (or was closed) before it went. ``reason`` names the kind of failure in a word or
    two (``"ConnectionError"``, ``"Timeout"``, ``"shutdown"``, ``"closed"``)."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class _BoundedRepr(reprlib.Repr):
    """reprlib's bounded repr (a few items, a few levels, long strings cut) that also shows an
    int too large to print (``sys.set_int_max_str_digits``) by its size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = 60
        self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        bits = int.bit_length(x)
        if bits > 128:
            return f"<an int of {bits} bits>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()


def _short_repr(value: Any, limit: int = 80) -> str:
    """``value`` (a setting, or a key of a tag: a name, not a value) for an error message, in
    bounded time and space; never raises, whatever its ``__repr__`` does."""
    try:
        text = str.__str__(_REPR.repr(value))  # an exact str, even from a hostile __repr__
    except Exception:
        text = "<a value whose repr() raised>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    try:
        kind = str.__str__(type(value).__name__)
    except Exception:  # a metaclass with a hostile __name__
        kind = "?"
    return f"{text} ({kind})"


_SIZED: dict[type, str] = {str: "character", bytes: "byte", bytearray: "byte"}
_COUNTED: tuple[type, ...] = (dict, list, tuple, set, frozenset)


def shape(value: Any) -> str:
    """What ``value`` is, without what it holds: ``a str of 14 characters``, ``an int of 10
    digits``, ``a dict of 3 items``, ``a Decimal``. Floats say only whether they are finite,
    None and bools are themselves. In bounded time, and never raises whatever the value is
    (exact types are asked their size, nothing of the value's own code runs)."""
    kind = type(value)
    if value is None or kind is bool:
        return repr(value)
    try:
        name = str.__str__(kind.__name__)[:60]
    except Exception:  # a metaclass with a hostile __name__
        name = "value of an unnamed type"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    unit = _SIZED.get(kind)
    if unit is not None:
        size = len(value)
        return f"{article} {name} of {size:,} {unit}{'' if size == 1 else 's'}"
    if kind is int:
        bits = int.bit_length(value)
        if bits > 128:
            return f"an int of {bits:,} bits"
        digits = len(str(abs(value)))
        return f"{'a negative' if value < 0 else 'an'} int of {digits} digit{'s' * (digits > 1)}"
    if kind is float:
        return "a float" if math.isfinite(value) else f"a float ({value!r})"
    if kind in _COUNTED:
        size = len(value)
        return f"{article} {name} of {size:,} item{'' if size == 1 else 's'}"
    return f"{article} {name}"


MASK = "<value>"
_MAX_ANSWER = 300  # characters of the API's message in the error's own message
_MAX_LEAVES = 1000  # values of a body looked for in that message
_MIN_MASKED = 3
# what a quoting server may write differently (escaped, or as \\xNN in a bytes repr): the
# pieces between them are masked one by one, so a value is found however it was quoted
_QUOTED = re.compile(r"[\"'\\\x00-\x1f\x7f-\U0010ffff]+")


def without_values(text: str, sent: bytes) -> str:
    """``text`` (an API's answer) with every value of the JSON body ``sent`` replaced by
    ``<value>``, and cut to a few hundred characters. The keys stay: they name fields, not
    people. Pieces shorter than three characters stay too: masking every ``1`` would garble
    the text, and tell nothing."""
    try:
        body = orjson.loads(sent)
    except orjson.JSONDecodeError:
        body = None
    values = sorted(_values_of(body), key=len, reverse=True)
    if values:
        # Masked a prefix at a time: a value the prefix cuts leaves a piece shorter than the
        # longest value at its end, which masking its parts (3 characters at least, each
        # becoming 7) makes at most 7/3 as long; once masking has shrunk the long values
        # before it, the masked prefix must still reach that far past the cut below.
        reach = _MAX_ANSWER + len(MASK) * (len(values[0]) + 1)
        prefix = reach
        while True:
            masked = _masked(text[:prefix], values)
            if prefix >= len(text) or len(masked) >= reach:
                break
            prefix *= 2
        text = masked
    return text if len(text) <= _MAX_ANSWER else text[: _MAX_ANSWER - 3] + "..."


def _masked(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, MASK)
    return text


def _values_of(body: Any) -> set[str]:
    """The texts of a JSON body's leaves (str, in pieces, and numbers as written)."""
    found: set[str] = set()
    todo = [body]
    while todo and len(found) < _MAX_LEAVES:
        node = todo.pop()
        kind = type(node)
        if kind is dict:
            todo.extend(node.values())
        elif kind is list:
            todo.extend(node)
        elif kind is str:
            found.add(node)
            found.update(_QUOTED.split(node))
        elif kind in (int, float):
            found.add(repr(node))
    return {value for value in found if len(value) >= _MIN_MASKED}


def _raised(exc: BaseException) -> str:
    """``reading it raised RuntimeError: boom``, for an exception whose str() may raise too."""
    return f"reading it raised {describe(exc)}"


INTERNAL = "internal"  # DeliveryError.reason when a fault here, not the payload, failed it


def internal_error(cause: BaseException, doing: str) -> DeliveryError:
    """What ``on_error`` receives for a payload that a fault in a part of the pipeline (a bug,
    or a failing part under it) kept from its way: a DeliveryError whose ``__cause__`` is
    that fault."""
    error = DeliveryError(
        f"not sent: interakt-logging failed while {doing} ({describe(cause)})", INTERNAL
    )
    error.__cause__ = cause
    return error


def describe(error: BaseException) -> str:
    """``RuntimeError: boom`` (the message cut at 80 characters), even for an exception whose
    str() raises."""
    try:
        detail = str.__str__(str(error))
    except Exception:
        detail = ""
    if len(detail) > 80:
        detail = detail[:77] + "..."
    return type(error).__name__ + (f": {detail}" if detail else "")
