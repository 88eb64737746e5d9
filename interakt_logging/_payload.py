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
import time
from collections.abc import Mapping
from typing import Any, FrozenSet, Optional, Tuple

import orjson

from ._errors import ValidationError

USERS_PATH = "/v1/public/track/users/"
EVENTS_PATH = "/v1/public/track/events/"

USER_TAG = "interakt_user"
EVENT_TAG = "interakt_event"

_USER_KEYS: FrozenSet[str] = frozenset(
    {"user_id", "phone_number", "country_code", "traits", "created_at"}
)
_EVENT_KEYS: FrozenSet[str] = _USER_KEYS | {"event"}
_ALLOWED_KEYS = {USERS_PATH: _USER_KEYS, EVENTS_PATH: _EVENT_KEYS}
_TAG_FOR_PATH = {USERS_PATH: USER_TAG, EVENTS_PATH: EVENT_TAG}

DEFAULT_COUNTRY_CODE = "+91"
_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY


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

    def message(self) -> dict[str, Any]:
        """What ``on_error`` receives: ``{"path": ..., "body": {...}}``, as the original SDK."""
        return {"path": self.path, "body": orjson.loads(self.wire_body())}

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
    """Validate a log record's ``interakt_user`` / ``interakt_event`` tag and build its payload."""
    if type(tag) is not dict:
        tag = _as_dict(tag, _TAG_FOR_PATH[path], "a dict with user_id and/or phone_number")
    allowed = _ALLOWED_KEYS[path]
    if not allowed.issuperset(tag):
        name = _TAG_FOR_PATH[path]
        unknown = sorted(str(k) for k in tag if k not in allowed)
        raise ValidationError(
            f"{name}.{unknown[0]}", tag[unknown[0]] if unknown[0] in tag else unknown[0],
            f"one of the keys {', '.join(sorted(allowed))} (unknown key: {', '.join(unknown)})",
        )
    # One function from the tag to the queued bytes: this runs on every tagged logging call.
    get = tag.get
    user_id = get("user_id")
    phone_number = get("phone_number")
    traits = get("traits")
    created_at = get("created_at")
    body: dict[str, Any] = {}
    if path is EVENTS_PATH:
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
        if isinstance(user_id, str):
            if user_id:
                body["userId"] = str(user_id)
        elif isinstance(user_id, int) and not isinstance(user_id, bool):
            if user_id:  # 0 counts as "no id", as in the original SDK
                body["userId"] = str(int(user_id))
        else:
            raise ValidationError("user_id", user_id, "a str or int user id")
    if phone_number is not None and phone_number != "":
        if not isinstance(phone_number, str) or not (
            phone_number.isascii() and phone_number.isdigit()
        ):
            raise ValidationError(
                "phone_number", phone_number, "a str of digits 0-9, without the country code"
            )
        country_code = get("country_code", DEFAULT_COUNTRY_CODE)
        if country_code not in _calling_codes():
            raise ValidationError(
                "country_code", country_code, "'+' and an ITU calling code, such as '+91' or '+1'"
            )
        body["countryCode"] = str(country_code)
        body["phoneNumber"] = str(phone_number)
    if "userId" not in body and "phoneNumber" not in body:
        raise ValidationError(
            "user_id", user_id,
            "a user_id, or a phone_number with its country_code: one of them identifies the user",
        )
    if created_at is not None:
        created = parse_created_at(created_at)
    try:
        data = orjson.dumps(body, default=_to_json, option=_JSON_OPTIONS)
    except TypeError:
        raise _explain_unserializable(traits) from None
    # orjson returns a short bytes that keeps its whole ~4 KB output buffer allocated; a queued
    # payload holds an exact-size copy instead (about 70 ns, and ~4 KB less per queued event).
    return path, b"".join((data, b"")), created


def build_payload(
    path: str,
    *,
    user_id: Any,
    phone_number: Any,
    country_code: Any,
    traits: Any,
    event: Any,
    created_at: Any,
    created: float,
) -> QueuedPayload:
    """The same checks and body from call arguments (the ``track`` module, the CLI)."""
    fields = {"user_id": user_id, "phone_number": phone_number, "country_code": country_code,
              "traits": traits, "created_at": created_at}
    if path is EVENTS_PATH:
        fields["event"] = event
    return payload_from_tag(path, fields, None, created)


def _as_dict(value: Any, field: str, expected: str) -> dict[Any, Any]:
    """A plain dict copy of a Mapping; ValidationError for anything else, or for a Mapping
    whose items cannot be read."""
    if not isinstance(value, Mapping):
        raise ValidationError(field, value, expected)
    try:
        return dict(value)
    except Exception as exc:
        raise ValidationError(
            field, value, f"{expected} (reading it raised {type(exc).__name__})"
        ) from None


def parse_created_at(value: Any, field: str = "created_at") -> float:
    """A datetime (naive means UTC), an ISO-8601 string or epoch seconds, as epoch seconds."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                field, value, "an ISO-8601 timestamp such as '2026-11-26T10:52:39.123Z'"
            ) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    else:
        raise ValidationError(field, value, "a datetime, an ISO-8601 string or epoch seconds")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


_CALLING_CODES: Optional[FrozenSet[str]] = None


def _calling_codes() -> FrozenSet[str]:
    """Every ``+<code>`` that phonenumbers knows, loaded on first use (the import takes ~25 ms)."""
    global _CALLING_CODES
    if _CALLING_CODES is None:
        from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

        _CALLING_CODES = frozenset(f"+{code}" for code in COUNTRY_CODE_TO_REGION_CODE)
    return _CALLING_CODES


def _to_json(value: Any) -> Any:
    """orjson's fallback for the types it does not handle itself."""
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise TypeError
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError


def _explain_unserializable(traits: Mapping[Any, Any]) -> ValidationError:
    """Find the first trait value orjson refuses and name its path, e.g. ``traits.items[2]``."""
    found = _find_bad(traits, "traits")
    if found is None:  # pragma: no cover - orjson refused the whole, yet no part alone
        return ValidationError("traits", traits, "JSON-serializable trait values")
    path, value, expected = found
    return ValidationError(path, value, expected)


_EXPECTED_VALUE = (
    "a JSON-serializable value (str, int, float, bool, None, datetime, date, UUID, Decimal, "
    "list, dict or dataclass)"
)


def _find_bad(value: Any, path: str) -> Optional[tuple[str, Any, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"{path}[{key!r}]", key, "str keys")
            found = _find_bad(item, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            found = _find_bad(item, f"{path}[{index}]")
            if found:
                return found
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _find_bad(dataclasses.asdict(value), path)
    try:
        orjson.dumps(value, default=_to_json, option=_JSON_OPTIONS)
    except TypeError:
        return (path, value, _EXPECTED_VALUE)
    return None

