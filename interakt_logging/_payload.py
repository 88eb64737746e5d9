"""Turn a tag (or the ``track`` module's arguments) into a validated, serialized payload.

Everything here runs on the calling thread, so it is kept lean: the body is serialized once with
orjson (a later mutation of the caller's traits changes nothing), and the only thing left for the
sender is splicing in ``createdAt``, whose formatting can wait.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Tuple, Union

import orjson

from ._errors import ValidationError, _raised, _short_repr

USERS_PATH = "/v1/public/track/users/"
"""The Track API path of a user call (create or update a user and their traits)."""
EVENTS_PATH = "/v1/public/track/events/"
"""The Track API path of an event call (an action on the user's timeline)."""

USER_TAG = "interakt_user"
EVENT_TAG = "interakt_event"

_USER_KEYS: FrozenSet[str] = frozenset(
    {"user_id", "phone_number", "country_code", "traits", "created_at"}
)
_EVENT_KEYS: FrozenSet[str] = _USER_KEYS | {"event"}
# path -> (the path constant itself, the tag that names it, the keys its tag may hold)
_PATHS: Dict[str, Tuple[str, str, FrozenSet[str]]] = {
    USERS_PATH: (USERS_PATH, USER_TAG, _USER_KEYS),
    EVENTS_PATH: (EVENTS_PATH, EVENT_TAG, _EVENT_KEYS),
}

DEFAULT_COUNTRY_CODE = "+91"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME
_DATETIME_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


QueuedPayload = Tuple[str, bytes, float]
"""What the calling thread builds and queues: ``(path, body, created)``. A plain tuple costs
~35 ns to build where a Payload object costs ~170 ns; the listener thread makes the Payload."""


class Payload:
    """One request to send: the API path, the JSON body (without ``createdAt``) and its time.

    ``seq`` orders payloads for ``flush``; ``attempts`` counts tries; ``outbox_id`` is the row
    that holds it on disk, when an outbox is configured.
    """

    __slots__ = ("attempts", "body", "created", "outbox_id", "path", "seq")

    def __init__(self, path: str, body: bytes, created: float) -> None:
        self.path = path
        self.body = body
        self.created = created
        self.seq = 0
        self.attempts = 0
        self.outbox_id: Optional[int] = None

    def wire_body(self) -> bytes:
        """The exact bytes to POST: the body with ``createdAt`` appended."""
        stamp = format_created(self.created).encode()
        return self.body[:-1] + b',"createdAt":"' + stamp + b'"}'

    def on_error_arg(self) -> dict[str, Any]:
        """What ``on_error`` receives with the error: ``{"path": ..., "body": {...}}``, as the
        original SDK. Total: a body that cannot be rendered is given as its decoded text."""
        try:
            return {"path": self.path, "body": orjson.loads(self.wire_body())}
        except Exception:
            return {"path": self.path, "body": self.body.decode("utf-8", "replace")}

    def __repr__(self) -> str:
        return f"<Payload {self.path} {len(self.body)} bytes>"


def format_created(created: float) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``: ``2026-11-26T10:52:39.123Z``."""
    millis = int(created * 1000 + 0.5)
    seconds, millis = divmod(millis, 1000)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, millis,
    )


def payload_from_tag(
    path: str, tag: Any, default_event: Optional[str], created: float
) -> QueuedPayload:
    """Validate a log record's ``interakt_user`` / ``interakt_event`` tag and build its payload.

    Total: returns, or raises ValidationError naming the field, whatever the tag holds (a value
    that raises when read, compared or printed, cycles, depth, NaN, huge ints, lone surrogates).
    The checks that need a walk of the traits run only when orjson refused them or wrote a
    ``null`` (a NaN writes one): the common call pays a scan of the written bytes (~0.1 µs).
    ``path`` is USERS_PATH or EVENTS_PATH (an equal str will do: the payload holds the constant).
    """
    try:
        path, tag_name, allowed = _PATHS[path]
    except Exception:  # not a key: an unknown path, unhashable, a str subclass that raises
        raise ValidationError(
            "path", path, f"USERS_PATH ({USERS_PATH!r}) or EVENTS_PATH ({EVENTS_PATH!r})"
        ) from None
    try:
        if type(tag) is not dict:
            tag = _as_dict(tag, tag_name, "a dict with user_id and/or phone_number")
        if not allowed.issuperset(tag):
            raise _unknown_key(tag_name, tag, allowed)
        # One function from the tag to the queued bytes: this runs on every tagged logging call.
        get = tag.get
        user_id = get("user_id")
        phone_number = get("phone_number")
        traits = get("traits")
        created_at = get("created_at")
        body: dict[str, Any] = {}
        if path == EVENTS_PATH:
            event = get("event", default_event)
            if type(event) is not str or not event:
                raise ValidationError("event", event, "a non-empty event name (str)")
            body["event"] = event
        if traits is None:
            traits = {}
        elif type(traits) is not dict:
            traits = _as_dict(traits, "traits", "a dict of trait names to values")
        body["traits"] = traits
        if type(user_id) is str:
            if user_id:
                body["userId"] = user_id
        elif user_id is not None:
            text = _user_id_text(user_id)
            if text:  # 0 counts as "no id", as in the original SDK
                body["userId"] = text
        if phone_number is not None:
            _add_phone(body, phone_number, get("country_code", DEFAULT_COUNTRY_CODE))
        if "userId" not in body and "phoneNumber" not in body:
            raise ValidationError(
                "user_id", user_id,
                "a user_id, or a phone_number with its country_code: one of them identifies "
                "the user",
            )
        if created_at is not None:
            created = parse_created_at(created_at)
        elif not CREATED_MIN <= created <= CREATED_MAX:  # a LogRecord made by hand
            raise ValidationError(
                "created_at", created,
                f"no created_at, so the log record's created time, {_CREATED_RANGE} in epoch "
                "seconds",
            )
        try:
            data = orjson.dumps(body, default=_to_json, option=_JSON_OPTIONS)
        except TypeError as exc:
            raise _refused(body, exc) from None
        # orjson writes NaN and infinity as null: a null in traits is a None unless proven not
        if traits and data.find(b"null") >= 0 and _may_hold_non_finite(traits):
            problem = _body_problem(body)
            if problem is not None:
                raise ValidationError(*problem)
    except ValidationError:
        raise
    except Exception as exc:  # a tag that breaks while read; the fields' own checks name theirs
        raise ValidationError(tag_name, tag, f"a tag that can be read ({_raised(exc)})") from None
    # orjson returns a short bytes that keeps its whole ~4 KB output buffer allocated; a queued
    # payload holds an exact-size copy instead (about 70 ns, and ~4 KB less per queued event).
    return path, b"".join((data, b"")), created


def _as_dict(value: Any, field: str, expected: str) -> dict[Any, Any]:
    """A plain dict copy of a Mapping; ValidationError for anything else, or for a Mapping
    whose items cannot be read."""
    try:
        if not isinstance(value, Mapping):
            raise ValidationError(field, value, expected)
        return _copy_mapping(value)
    except ValidationError:
        raise
    except Exception as exc:
        raise ValidationError(field, value, f"{expected} ({_raised(exc)})") from None


MAX_MAPPING_ITEMS = 100_000
"""A Mapping that is not a dict is copied item by item, up to this many: one that never ends
(or grows while read) is refused instead of holding the logging call for ever."""


def _copy_mapping(value: Mapping[Any, Any]) -> dict[Any, Any]:
    copy: dict[Any, Any] = {}
    for key in value:
        if len(copy) >= MAX_MAPPING_ITEMS:
            raise ValueError(f"a Mapping of more than {MAX_MAPPING_ITEMS:,} items")
        copy[key] = value[key]
    return copy


def _unknown_key(tag_name: str, tag: dict[Any, Any], allowed: FrozenSet[str]) -> ValidationError:
    expected = f"one of the keys {', '.join(sorted(allowed))}"
    for key in tag:
        if key not in allowed:
            return ValidationError(
                _key_path(tag_name, key), tag[key], f"{expected} (unknown key: {_short_key(key)})"
            )
    return ValidationError(tag_name, tag, expected)  # a key that compares equal only sometimes


def _user_id_text(user_id: Any) -> str:
    """A non-str user id as the str sent (``42`` -> ``"42"``, ``0`` -> ``""``: no id)."""
    text = _text_of(user_id)
    if text is not None:
        return text
    if not issubclass(type(user_id), int) or type(user_id) is bool:
        raise ValidationError("user_id", user_id, "a str or int user id")
    number = int.__index__(user_id)
    try:
        return str(number) if number else ""
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        raise ValidationError(
            "user_id", user_id, "a str or int user id; this int is too large to write as text"
        ) from None


def _add_phone(body: dict[str, Any], phone_number: Any, country_code: Any) -> None:
    """Add ``countryCode`` and ``phoneNumber`` (an empty phone number counts as none)."""
    phone = phone_number if type(phone_number) is str else _text_of(phone_number)
    if phone == "":
        return
    if phone is None or not (phone.isascii() and phone.isdigit()):
        raise ValidationError(
            "phone_number", phone_number, "a str of digits 0-9, without the country code"
        )
    code = country_code if type(country_code) is str else _text_of(country_code)
    if code not in _calling_codes():
        raise ValidationError(
            "country_code", country_code, "'+' and an ITU calling code, such as '+91' or '+1'"
        )
    body["countryCode"] = code
    body["phoneNumber"] = phone


def _text_of(value: Any) -> Optional[str]:
    """The exact str of a str (a subclass's text, whatever it overrides); None otherwise. By
    type(), not isinstance(), which asks the value's own ``__class__``."""
    if type(value) is str:
        return value
    return str.__str__(value) if issubclass(type(value), str) else None


CREATED_MIN = 0.0
"""1970-01-01T00:00:00.000Z: no earlier ``createdAt`` is accepted."""
CREATED_MAX = 253402300799.999
"""9999-12-31T23:59:59.999Z, the last time ``format_created`` can write in four digits."""
_CREATED_RANGE = "between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z"
_EXPECTED_CREATED = f"a datetime, an ISO-8601 string or epoch seconds, {_CREATED_RANGE}"


def parse_created_at(value: Any, field: str = "created_at") -> float:
    """A datetime (naive means UTC), an ISO-8601 string or epoch seconds, as epoch seconds.

    Only times ``format_created`` can write are accepted: 1970 to 9999, finite; an epoch that
    is in range once divided by 1000 is called what it most likely is, milliseconds.
    """
    kind = type(value)
    if (kind is float or kind is int) and CREATED_MIN <= value <= CREATED_MAX:
        return float(value)  # epoch seconds, the common case: no further question to ask
    try:
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, str):
            text = str.__str__(value).strip()
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            try:
                moment = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValidationError(
                    field, value,
                    f"an ISO-8601 timestamp such as '2026-11-26T10:52:39.123Z', {_CREATED_RANGE}",
                ) from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return _epoch_seconds(value, field)
        else:
            raise ValidationError(field, value, _EXPECTED_CREATED)
        if dt.datetime.utcoffset(moment) is None:
            moment = dt.datetime.replace(moment, tzinfo=dt.timezone.utc)
        seconds = dt.datetime.timestamp(moment)
    except ValidationError:
        raise
    except Exception as exc:  # a datetime whose tzinfo raises or answers nonsense, ...
        raise ValidationError(field, value, f"{_EXPECTED_CREATED} ({_raised(exc)})") from None
    if not CREATED_MIN <= seconds <= CREATED_MAX:
        raise ValidationError(field, value, f"a time {_CREATED_RANGE}")
    return seconds


def _epoch_seconds(value: float, field: str) -> float:
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float, such as 10**400
        seconds = math.inf if value > 0 else -math.inf
    if CREATED_MIN <= seconds <= CREATED_MAX:
        return seconds
    expected = f"epoch seconds {_CREATED_RANGE} (0 to {CREATED_MAX})"
    if CREATED_MIN <= seconds / 1000 <= CREATED_MAX:
        expected = f"{expected}; this looks like milliseconds (divide by 1000)"
    raise ValidationError(field, value, expected)


_CALLING_CODES: Optional[FrozenSet[str]] = None


def _calling_codes() -> FrozenSet[str]:
    """Every ``+<code>`` that phonenumbers knows, loaded on first use (the import takes ~25 ms)."""
    global _CALLING_CODES
    if _CALLING_CODES is None:
        from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

        _CALLING_CODES = frozenset(f"+{code}" for code in COUNTRY_CODE_TO_REGION_CODE)
    return _CALLING_CODES


def _to_json(value: Any) -> Any:
    """orjson's fallback for the types it does not handle itself.

    Datetimes come here too (``OPT_PASSTHROUGH_DATETIME``): orjson calls a custom tzinfo's
    ``utcoffset`` itself and crashes the process when it raises (orjson 3.13), or writes
    ``+00:00`` when it answers nonsense. orjson still writes the common ones (naive or a
    ``datetime.timezone``, ~3x faster than isoformat); any other is checked by the stdlib
    here, and a failure is a TypeError that names the trait.
    """
    if isinstance(value, dt.datetime):
        zone = value.tzinfo
        if type(value) is dt.datetime and (zone is None or type(zone) is dt.timezone):
            return orjson.dumps(value, option=_DATETIME_OPTIONS)[1:-1].decode()  # safe: stdlib
        offset = dt.datetime.utcoffset(value)  # a subclass, or any other tzinfo: checked here
        text = dt.datetime.isoformat(value)
        if offset is None:
            return text + "Z"
        return text[:-6] + "Z" if not offset else text
    if isinstance(value, dt.date):
        return dt.date.isoformat(value)
    if isinstance(value, dt.time):
        if value.tzinfo is not None:  # as orjson: a time of day has no offset worth sending
            raise TypeError("a time with a tzinfo")
        return dt.time.isoformat(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise TypeError
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, Mapping):
        return _copy_mapping(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError


# -- explaining a refusal: only ever runs when a body could not be written ------------------------

TRAITS_MAX_DEPTH = 253
"""Most levels of nesting in traits (``traits`` itself is level 1, each dict, list, tuple,
set, Mapping or dataclass inside adds one): as deep as orjson writes (254 containers in the
body, which is one more)."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_EXPECTED_VALUE = (
    "a JSON-serializable value (str, int, float, bool, None, datetime, date, UUID, Decimal, "
    "list, dict or dataclass)"
)
_EXPECTED_INT = f"an int from {_INT_MIN} to {_INT_MAX} (64 bits, as JSON numbers are read)"
_EXPECTED_FINITE = "a finite number (NaN and infinity have no JSON form)"
_EXPECTED_TEXT = "text that is valid UTF-8 (a lone surrogate is not)"
_EXPECTED_KEY_TEXT = "str keys that are valid UTF-8 (a lone surrogate is not)"
_NULL_FREE = frozenset({str, int, bool, type(None), dt.datetime, dt.date, uuid.UUID})


class _Problem(NamedTuple):
    """The first thing a body cannot carry: the ValidationError's arguments."""

    field: str
    given: Any
    expected: str


def _refused(body: dict[str, Any], exc: TypeError) -> ValidationError:
    """Why orjson refused ``body``: the field (``traits.items[2]``) and what it holds."""
    problem = _body_problem(body)
    if problem is None:  # orjson refused the whole, yet no part alone (a Mapping that changed)
        problem = _Problem("traits", body["traits"], f"{_EXPECTED_VALUE} ({_raised(exc)})")
    return ValidationError(*problem)


def _body_problem(body: dict[str, Any]) -> Optional[_Problem]:
    for field, key in (("event", "event"), ("user_id", "userId")):
        text = body.get(key)
        if text is not None and not _is_utf8(text):
            return _Problem(field, text, _EXPECTED_TEXT)
    return _find_problem(body["traits"], "traits")


def _may_hold_non_finite(traits: dict[str, Any]) -> bool:
    """After orjson wrote a ``null``: False when it can only have come from a None (the
    usual case, decided without paths or copies); True when a float is NaN or infinite, or a
    value is of a kind only ``_find_problem`` can judge."""
    pending: list[Iterable[Any]] = [traits.values()]
    while pending:
        for value in pending.pop():
            kind = type(value)
            if kind is float:
                if value - value:  # NaN for NaN and ±inf, 0.0 otherwise
                    return True
            elif kind in _NULL_FREE:
                pass
            elif kind is dict:
                pending.append(value.values())
            elif kind is list or kind is tuple:
                pending.append(value)
            else:
                return True
    return False


_Children = List[Tuple[str, Any]]


def _find_problem(value: Any, path: str) -> Optional[_Problem]:
    """The first value under ``path`` the body cannot carry, or None.

    Mirrors what orjson writes (with ``_to_json``), without recursion: an explicit stack,
    cycles caught by identity, depth bounded by TRAITS_MAX_DEPTH and each Mapping read once,
    so any value is explained in time linear in its size.
    """
    stack: list[tuple[Any, str, int, tuple[Any, ...]]] = [(value, path, 1, ())]
    while stack:
        value, path, depth, ancestors = stack.pop()
        try:
            found = _check(value, path)
        except Exception as exc:
            return _Problem(path, value, f"a value that can be read ({_raised(exc)})")
        if found is None:
            continue
        if isinstance(found, _Problem):
            return found
        if depth > TRAITS_MAX_DEPTH:
            return _Problem(
                path, value, f"values nested at most {TRAITS_MAX_DEPTH} levels deep in traits"
            )
        if any(ancestor is value for ancestor in ancestors):
            return _Problem(path, value, "a value that does not contain itself (a cycle)")
        inner = (*ancestors, value)
        if depth >= _SHOWN_LEVELS:  # deep down, one path says where it starts, not every step
            shown = path if path.endswith("...") else f"{path}..."
            found = [(shown, child) for _, child in found]
        stack.extend((child, child_path, depth + 1, inner) for child_path, child in
                     reversed(found))
    return None


def _check(value: Any, path: str) -> Union[_Problem, _Children, None]:
    """One value: None when it is written as is, a _Problem, or the children of a container
    (with their paths)."""
    for _ in range(_MAX_CONVERSIONS):
        if isinstance(value, str):
            return None if _is_utf8(value) else _Problem(path, value, _EXPECTED_TEXT)
        if value is None or value is True or value is False:
            return None
        if isinstance(value, int):  # int subclasses and IntEnums too, as orjson writes them
            return None if _INT_MIN <= int.__index__(value) <= _INT_MAX else _Problem(
                path, value, _EXPECTED_INT)
        if type(value) is float:
            return None if math.isfinite(value) else _Problem(path, value, _EXPECTED_FINITE)
        if isinstance(value, dict):
            return _dict_children(dict.items(value), path)
        if isinstance(value, list):
            return [(f"{path}[{i}]", item) for i, item in enumerate(list.__iter__(value))]
        if type(value) is tuple:
            return [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        if isinstance(value, enum.Enum):
            value = value.value
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _dict_children(_dataclass_items(value), path)
        try:  # UUID, numpy: what orjson writes itself (with datetimes passed through to us)
            written = orjson.dumps(value, option=_JSON_OPTIONS)
        except TypeError:
            pass
        else:
            return None if b"null" not in written else _Problem(path, value, _EXPECTED_FINITE)
        try:
            value = _to_json(value)
        except TypeError as exc:  # bare for a type it does not take, with a reason otherwise
            reason = f" ({_raised(exc)})" if exc.args else ""
            return _Problem(path, value, _EXPECTED_VALUE + reason)
        if isinstance(value, float) and not math.isfinite(value):
            return _Problem(path, value, _EXPECTED_FINITE)  # a Decimal beyond any float
    return _Problem(path, value, _EXPECTED_VALUE)  # pragma: no cover - an Enum of Enums of ...


_MAX_CONVERSIONS = 16
_SHOWN_LEVELS = 8


def _dict_children(items: Iterable[Tuple[Any, Any]], path: str) -> Union[_Problem, _Children]:
    children: _Children = []
    for key, item in items:
        if type(key) is not str:  # orjson writes str keys only (not even subclasses)
            return _Problem(_key_path(path, key), key, "str keys")
        if not _is_utf8(key):
            return _Problem(_key_path(path, key), key, _EXPECTED_KEY_TEXT)
        children.append((_key_path(path, key), item))
    return children


def _dataclass_items(value: Any) -> Iterable[Tuple[str, Any]]:
    """The fields orjson writes: its ``__dict__`` (or, with slots, its fields), minus names
    that start with ``_``."""
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        items = list(dict.items(attrs))
    else:
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    return [(k, v) for k, v in items if not (type(k) is str and k.startswith("_"))]


def _is_utf8(text: str) -> bool:
    try:
        str.encode(text, "utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key_path(path: str, key: Any) -> str:
    """``traits.plan`` for a plain name, ``traits['order no']`` or ``traits[1]`` otherwise."""
    if type(key) is str and key.isidentifier() and len(key) <= 40:
        return f"{path}.{key}"
    return f"{path}[{_short_key(key)}]"


def _short_key(key: Any) -> str:
    return _short_repr(key, 40).rsplit(" (", 1)[0]
