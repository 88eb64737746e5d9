"""Property-based tests (Hypothesis): whatever a tag holds, the logging call returns, prints no
logging error, and the payload ends exactly one way: sent as strict JSON that round-trips the
input, or reported with a ValidationError that names a field the input really has.

Runs derandomized and without an example database, so CI sees the same examples every time;
``HYPOTHESIS_PROFILE=explore`` searches afresh with more examples.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import enum
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interakt_logging import InteraktHandler, InteraktProcessor, ValidationError, track
from interakt_logging._payload import EVENTS_PATH, TRAITS_MAX_DEPTH, payload_from_tag
from interakt_logging.testing import MockInteraktServer, capture

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "explore", parent=settings.get_profile("ci"), max_examples=2000, derandomize=False,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TAG_FIELDS = {"user_id", "phone_number", "country_code", "traits", "created_at", "event",
              "interakt_event"}


# -- values ----------------------------------------------------------------------------------------


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


surrogate_text = st.builds(
    lambda head, code, tail: head + chr(code) + tail,
    st.text(max_size=5), st.integers(0xD800, 0xDFFF), st.text(max_size=5),
)
texts = st.text(max_size=20) | surrogate_text
ints = (
    st.integers(-(2**63), 2**64 - 1) | st.integers(-(2**70), 2**70)
    | st.sampled_from([2**64, -(2**63) - 1])
    | st.builds(pow, st.just(10), st.just(5000))  # beyond the int-to-str limit (even for repr)
)
floats = st.floats(allow_nan=True, allow_infinity=True)
deep = st.sampled_from([TRAITS_MAX_DEPTH - 2, TRAITS_MAX_DEPTH - 1, TRAITS_MAX_DEPTH, 10_000]).map(_nested)

json_scalars = st.none() | st.booleans() | ints | floats | texts
json_like = st.recursive(
    json_scalars | deep,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
"""Data JSON has words for, plus what it has none for: NaN, infinity, ints beyond 64 bits,
lone surrogates, more nesting than orjson writes."""


class Hostile:
    """Raises from everything a serializer or an error message might call on it."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("iter")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        return id(self) >> 4  # hashable, so it can be a key (and raises if ever compared)


class HostileStr(str):
    """A str subclass whose every override raises: only its text may be used."""

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = str.__hash__

    def strip(self, chars: Optional[str] = None) -> str:
        raise RuntimeError("strip")


class HostileDict(dict):  # type: ignore[type-arg]
    """A dict subclass whose reading methods raise (orjson reads the dict underneath)."""

    def items(self) -> Any:
        raise RuntimeError("items")

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("iter")

    def get(self, key: Any, default: Any = None) -> Any:
        raise RuntimeError("get")


class UnhashableHostile(Hostile):
    def __hash__(self) -> int:
        raise RuntimeError("hash")


class ShiftingMapping(Mapping[str, Any]):
    """A Mapping that changes while it is read: each read adds a key and changes the values."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"a": 1}

    def __getitem__(self, key: str) -> Any:
        self.data[f"k{len(self.data)}"] = len(self.data)
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)


class UnreadableMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["gone"])

    def __len__(self) -> int:
        return 1


class BrokenTimezone(datetime.tzinfo):
    """Forgot utcoffset: the base class raises NotImplementedError."""


class Odd(enum.Enum):
    NAN = float("nan")
    HUGE = 2**70
    FINE = "fine"


@dataclasses.dataclass
class Box:
    value: Any
    _private: Any = None


def _cycle(value: Any) -> Any:
    looped: dict[str, Any] = {"value": value}
    looped["again"] = [looped]
    return looped


def _made(makers: list[Callable[[], Any]]) -> st.SearchStrategy[Any]:
    """A fresh object from one of ``makers`` (Hypothesis hashes and prints what it samples,
    and these objects refuse both)."""
    return st.sampled_from(makers).map(lambda make: make())


def _broken_datetime() -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, tzinfo=BrokenTimezone())


hostile_leaves = _made([
    Hostile, UnhashableHostile, object, lambda: b"bytes", lambda: bytearray(b"x"),
    lambda: 1 + 2j, lambda: Odd.NAN, lambda: Odd.HUGE, lambda: Odd.FINE, lambda: {1, 2},
    lambda: frozenset({"a"}), lambda: uuid.UUID(int=5), ShiftingMapping, UnreadableMapping,
    _broken_datetime, lambda: datetime.datetime(2026, 1, 1), lambda: datetime.date(2026, 1, 1),
    lambda: datetime.time(10, 30), lambda: datetime.time(10, 30, tzinfo=datetime.timezone.utc),
    lambda: decimal.Decimal("NaN"), lambda: decimal.Decimal("1e400"),
    lambda: decimal.Decimal("2.5"), lambda: range(3), lambda: len, lambda: HostileStr("x"),
    lambda: HostileDict(a=1),
]) | st.decimals(allow_nan=True, allow_infinity=True)
hostile_keys = texts | st.integers() | _made([Hostile, lambda: None, lambda: ("t",), lambda: b"k"])
hostile = st.recursive(
    json_scalars | hostile_leaves | deep,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(hostile_keys, children, max_size=3)
        | st.builds(Box, children)
        | st.builds(_cycle, children)
    ),
    max_leaves=10,
)
"""Everything above, and objects that raise when printed, compared, iterated or read, cycles,
sets, bytes, Enums and Decimals JSON cannot carry, broken timezones, Mappings that change."""

user_ids = texts | ints | _made([lambda: 0, lambda: "", lambda: None, lambda: True, lambda: 4.5,
                                  Hostile, list, lambda: b"42", lambda: HostileStr("u2")])
created_ats = st.none() | st.floats(0, 253402300799.999) | _made([
    lambda: float("nan"), lambda: float("inf"), lambda: 1e20, lambda: 10**400,
    lambda: 1732618359123, lambda: -1, lambda: 0, lambda: 253402300799.999,
    lambda: "2026-11-26T10:52:39Z", lambda: "0001-01-01T00:00:00", lambda: "yesterday", Hostile,
    _broken_datetime, lambda: datetime.datetime(9999, 12, 31), lambda: HostileStr("2026-01-01"),
])
events = texts | _made([lambda: None, lambda: "", lambda: 5, Hostile, lambda: HostileStr("E")])


@st.composite
def tags(draw: st.DrawFn, traits: st.SearchStrategy[Any]) -> dict[str, Any]:
    """An interakt_event tag: an id (usually a usable one), traits, sometimes the rest, and
    now and then a key that has no business there."""
    tag: dict[str, Any] = {"user_id": draw(st.just("u1") | user_ids)}
    value = draw(traits)
    shape = draw(st.integers(0, 5))  # (not sampled_from: it hashes, and some values refuse)
    tag["traits"] = value if shape == 4 else HostileDict(t=value) if shape == 5 else {"t": value}
    if draw(st.booleans()):
        tag["event"] = draw(events)
    if draw(st.booleans()):
        tag["created_at"] = draw(created_ats)
    if draw(st.integers(0, 5)) == 0:
        tag["phone_number"] = draw(_made([lambda: "9999999999", lambda: "", lambda: "12ab",
                                          lambda: 99, Hostile, lambda: HostileStr("9999")]))
        tag["country_code"] = draw(_made([lambda: "+91", lambda: "+1", lambda: "91", list, Hostile,
                                          lambda: None, lambda: HostileStr("+91")]))
    if draw(st.integers(0, 9)) == 0:
        tag[draw(hostile_keys)] = draw(json_scalars)
    return tag
# -- what must hold ----------------------------------------------------------------------------------


def strict_json(body: bytes) -> Any:
    """The body parsed by a parser that refuses NaN/Infinity (the API's JSON is strict)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"non-strict JSON constant {constant} in {body[:200]!r}")

    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def sendable(value: Any, depth: int = 1) -> bool:
    """The oracle for json_like data: could this be sent as it is?"""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value <= 2**64 - 1
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return _utf8(value)
    if depth > TRAITS_MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(sendable(item, depth + 1) for item in value)
    return all(_utf8(k) and sendable(v, depth + 1) for k, v in value.items())


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SEGMENT = re.compile(r"\.([^.\[]+)|\[(-?\d+)\]|\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def resolve(tag: dict[str, Any], field: str) -> tuple[bool, Any]:
    """Follow ``traits.a[0]['k']`` into the tag as far as the path is exact; (found, value).
    A path cut short (``...``) or a key shown abbreviated resolves to its last exact step."""
    root = field.split(".")[0].split("[")[0]
    assert root in TAG_FIELDS, f"{field!r} names no field of the tag"
    if root not in tag:
        return root in ("event", "interakt_event", "country_code", "created_at", "user_id"), None
    value, rest = tag[root], field[len(root):]
    while rest and not rest.startswith("..."):
        match = _SEGMENT.match(rest)
        if match is None:
            return True, value  # an abbreviated key: the path up to here was real
        name, index, quoted = match.groups()
        try:
            key: Any = name if name is not None else int(index) if index is not None else ast.literal_eval(quoted)
        except (SyntaxError, ValueError):
            return True, value
        if isinstance(value, Box):  # what orjson writes of it: its public attributes
            value = {"value": value.value}
        if isinstance(value, Mapping) and not isinstance(value, dict):
            return True, value  # read once and copied: the path into it is the copy's
        in_list = isinstance(value, (list, tuple)) and isinstance(key, int) and key < len(value)
        in_dict = isinstance(value, dict) and any(type(k) is type(key) and k == key for k in value)
        if not (in_list or in_dict):
            return False, None
        value = value[key]
        rest = rest[match.end():]
    return True, value


class Outcome:
    """What became of one logged tag: what was captured (sent) and what on_error got."""

    def __init__(self) -> None:
        self.errors: list[tuple[Exception, Any]] = []
        self.logging_errors: list[logging.LogRecord] = []


def handler_for(outcome: Outcome, **kwargs: Any) -> InteraktHandler:
    handler = InteraktHandler(on_error=lambda e, p: outcome.errors.append((e, p)), **kwargs)
    handler.handleError = outcome.logging_errors.append  # type: ignore[method-assign]
    return handler


def check_one_outcome(
    tag: dict[str, Any], sent: list[dict[str, Any]], outcome: Outcome,
    round_trip: Optional[Callable[[dict[str, Any]], None]] = None,
) -> None:
    """Exactly one of: sent as strict JSON (round-tripping, when the input says what to
    expect), or a ValidationError naming a field the tag has."""
    assert outcome.logging_errors == [], "a logging error was printed"
    assert len(sent) + len(outcome.errors) == 1, (sent, outcome.errors)
    if sent:
        if round_trip is not None:
            round_trip(sent[0])
        return
    ((error, _),) = outcome.errors
    assert type(error) is ValidationError, repr(error)
    found, _ = resolve(tag, error.field)
    assert found, f"{error.field!r} is not in the tag ({error})"
    str(error), repr(error)


@pytest.fixture(autouse=True)
def _quiet_warnings() -> Iterator[None]:
    """The warnings about bad input are the point here, not output to read."""
    library = logging.getLogger("interakt_logging")
    before = library.level
    library.setLevel(logging.CRITICAL)
    yield
    library.setLevel(before)


def _log(handler: InteraktHandler, message: Any, tag: Any, args: tuple[Any, ...] = ()) -> None:
    record = logging.makeLogRecord({"msg": message, "args": args, "interakt_event": tag})
    handler.handle(record)  # must not raise


@given(tag=tags(json_like))
def test_json_like_traits_are_sent_exactly_or_refused_naming_the_bad_value(tag: dict[str, Any]) -> None:
    outcome = Outcome()
    with capture() as captured:
        handler = handler_for(outcome)
        try:
            _log(handler, "Order Placed", tag)
            assert handler.flush(10)
        finally:
            handler.close()
    sent = [call.body for call in captured]

    traits = {} if tag["traits"] is None else tag["traits"]

    def same_traits(body: dict[str, Any]) -> None:
        assert type(traits) is dict and body["traits"] == traits

    check_one_outcome(tag, sent, outcome, same_traits)
    if type(traits) is dict:
        bad_traits = outcome.errors and outcome.errors[0][0].field.startswith("traits")
        assert not (bad_traits and sendable(traits)), outcome.errors
        assert not (sent and not sendable(traits)), sent


@given(tag=tags(hostile), message=_made([lambda: "Order Placed", lambda: "Order %d", Hostile,
                                         lambda: "E\ud800", lambda: "Order %s"]),
       args=st.tuples() | st.tuples(hostile))
def test_hostile_tags_end_exactly_one_way(tag: dict[str, Any], message: Any, args: tuple[Any, ...]) -> None:
    outcome = Outcome()
    with capture() as captured:
        handler = handler_for(outcome)
        try:
            _log(handler, message, tag, args)
            assert handler.flush(10)
        finally:
            handler.close()
    check_one_outcome(tag, [call.body for call in captured], outcome)


@given(tag=tags(hostile))
def test_track_raises_only_validation_errors(tag: dict[str, Any]) -> None:
    outcome = Outcome()
    kwargs = {key: tag[key] for key in TAG_FIELDS if key in tag}  # what track.event takes
    kwargs.setdefault("event", "Order Placed")
    with capture() as captured:
        handler = handler_for(outcome)
        track.default_client = handler
        raised: list[Exception] = []
        try:
            try:
                queued, message = track.event(**kwargs)
            except ValidationError as exc:
                str(exc)
                found, _ = resolve(kwargs, exc.field)
                assert found, exc.field
                raised.append(exc)
            else:
                assert queued is True
                strict_json(orjson.dumps(message["body"]))
            assert handler.flush(10)
        finally:
            track.default_client = None
            handler.close()
    # a refused call is reported (on_error) as from every door, then raised: exactly one way
    assert outcome.logging_errors == []
    assert [error for error, _ in outcome.errors] == raised
    assert len(captured) + len(raised) == 1


@pytest.fixture(scope="module")
def module_server() -> Iterator[MockInteraktServer]:
    with MockInteraktServer() as srv:
        yield srv


@settings(max_examples=40)
@given(batch=st.lists(tags(json_like | hostile), min_size=1, max_size=8))
def test_over_http_every_tag_is_delivered_as_strict_json_or_reported(
    module_server: MockInteraktServer, batch: list[dict[str, Any]],
) -> None:
    """The same through a real sender and a real server on loopback: each tag's request
    arrives as strict JSON, or the tag is reported; none is both, none is lost."""
    module_server.requests.clear()  # the previous example's, all answered
    outcome = Outcome()
    handler = handler_for(outcome, host=module_server.url)
    try:
        for index, tag in enumerate(batch):
            _log(handler, f"Event {index}", tag)
        assert handler.flush(20)
    finally:
        handler.close()
    assert outcome.logging_errors == []
    names = [request.body["event"] for request in module_server.requests]
    for request in module_server.requests:
        strict_json(request.raw)
    reported = [payload for _, payload in outcome.errors]
    assert len(names) + len(reported) == len(batch)
    assert all(type(error) is ValidationError for error, _ in outcome.errors)
    stats = handler.stats()
    assert (stats["sent"], stats["failed"]) == (len(names), len(reported))


timezones = st.none() | st.builds(
    datetime.timezone, st.timedeltas(min_value=datetime.timedelta(hours=-23, minutes=59),
                                     max_value=datetime.timedelta(hours=23, minutes=59)).map(
        lambda d: datetime.timedelta(minutes=d // datetime.timedelta(minutes=1))))


@given(value=st.datetimes(timezones=timezones) | st.dates() | st.times())
def test_datetimes_are_written_as_orjson_wrote_them_and_read_back_the_same(value: Any) -> None:
    """We write datetimes ourselves (orjson crashes on a tzinfo that raises): byte for byte
    what orjson wrote for datetimes and dates, and ISO-8601 text that reads back as the same
    value for all (orjson got some times of day wrong: see test_validation)."""
    _, body, _ = payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"t": value}}, "E", 0.0)
    text = orjson.loads(body)["traits"]["t"]
    kind = type(value)
    read_back = kind.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if kind is datetime.datetime and value.tzinfo is None:
        read_back = read_back.replace(tzinfo=None)
    assert read_back == value
    if kind is not datetime.time:
        native = orjson.dumps(value, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)
        assert body == b'{"event":"E","traits":{"t":' + native + b'},"userId":"1"}'


fine_exotic = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10) | st.datetimes(timezones=timezones) | st.dates() | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**15), max_value=10**15)
    | st.just(Odd.FINE) | st.frozensets(st.integers(0, 9), max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=5), children, max_size=3) | st.builds(Box, children)
    ),
    max_leaves=10,
)
"""Everything the tagging docs accept, in every combination: none of it may be refused."""


@given(value=fine_exotic)
def test_what_the_docs_accept_is_sent_as_orjson_wrote_it(value: Any) -> None:
    """No false refusal: the checks that look closer where orjson wrote a null (a None in a
    dataclass, say) find nothing to refuse in accepted values, and the bytes are orjson's."""
    from interakt_logging._payload import _to_json

    _, body, _ = payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"t": value}}, "E", 0.0)
    native = orjson.dumps({"t": value}, default=_to_json, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)
    assert body == b'{"event":"E","traits":' + native + b',"userId":"1"}'


@given(tag=tags(hostile), extra=st.fixed_dictionaries({"name": events, "timestamp": created_ats}),
       rendered=st.booleans())
def test_the_structlog_processor_never_raises_and_ends_each_tag_one_way(
    tag: dict[str, Any], extra: dict[str, Any], rendered: bool,
) -> None:
    """The processor's door: the event name and the TimeStamper's timestamp come from the
    event dict (anything a processor before it put there); after a renderer it gets a str.
    (Name and timestamp are drawn inside a dict: Hypothesis itself trips on a top-level value
    whose __eq__ raises.)"""
    name, timestamp = extra["name"], extra["timestamp"]
    outcome = Outcome()
    with capture() as captured:
        handler = handler_for(outcome)
        try:
            processor = InteraktProcessor(handler)
            event_dict: Any = {"event": name, "timestamp": timestamp, "interakt_event": tag}
            if rendered:
                event_dict = "event='Order Placed' interakt_event={'user_id': '1'}"
                assert processor(None, "info", event_dict) is event_dict
                assert outcome.errors == []
                return
            assert processor(None, "info", event_dict) is event_dict
            assert "interakt_event" not in event_dict
            assert handler.flush(10)
        finally:
            handler.close()
    check_one_outcome({"event": name, **tag}, [call.body for call in captured], outcome)
