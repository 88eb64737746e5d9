"""Bad tags are refused on the calling thread with an error that names the field, says what was
given and what is expected; the logging call itself never raises, and nothing is sent."""

from __future__ import annotations

import datetime
import decimal
import itertools
import logging
import pickle
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import orjson
import pytest

from interakt_logging import (
    APIError,
    DeliveryError,
    InteraktHandler,
    InteraktProcessor,
    QueueFullError,
    ValidationError,
    track,
)
from interakt_logging._payload import (
    EVENTS_PATH,
    TRAITS_MAX_DEPTH,
    Payload,
    payload_from_tag,
)
from interakt_logging.testing import MockInteraktServer

from .conftest import UnreadableMapping, run_python

BAD_TAGS = [
    pytest.param("interakt_event", {"traits": {"a": 1}}, "user_id", "phone_number", id="no-identity"),
    pytest.param("interakt_event", {"user_id": 4.2}, "user_id", "str or int", id="float-user-id"),
    pytest.param("interakt_event", {"user_id": True}, "user_id", "str or int", id="bool-user-id"),
    pytest.param("interakt_user", {"phone_number": "98-765"}, "phone_number", "digits", id="phone-dash"),
    pytest.param("interakt_user", {"phone_number": 9999999999}, "phone_number", "digits", id="phone-int"),
    pytest.param("interakt_user", {"phone_number": "٩٩٩"}, "phone_number", "digits", id="phone-arabic-digits"),
    pytest.param("interakt_user", {"phone_number": "999", "country_code": "91"}, "country_code", "ITU", id="cc-no-plus"),
    pytest.param("interakt_user", {"phone_number": "999", "country_code": "+999"}, "country_code", "ITU", id="cc-unknown"),
    pytest.param("interakt_user", {"phone_number": "999", "country_code": 91}, "country_code", "ITU", id="cc-int"),
    pytest.param("interakt_user", {"user_id": "1", "traits": ["a"]}, "traits", "dict", id="traits-list"),
    pytest.param("interakt_user", {"user_id": "1", "traits": {"obj": object()}}, "traits.obj", "JSON-serializable", id="trait-object"),
    pytest.param("interakt_user", {"user_id": "1", "traits": {"a": {"b": [1, {2}, b"x"]}}}, "traits.a.b[2]", "JSON-serializable", id="trait-nested-bytes"),
    pytest.param("interakt_user", {"user_id": "1", "traits": {1: "x"}}, "traits[1]", "str keys", id="trait-int-key"),
    pytest.param("interakt_user", {"usr_id": "1"}, "interakt_user.usr_id", "user_id", id="typo-key"),
    pytest.param("interakt_user", "user-1", "interakt_user", "dict", id="tag-not-mapping"),
    pytest.param("interakt_event", {"user_id": "1", "event": ""}, "event", "non-empty", id="empty-event"),
    pytest.param("interakt_event", {"user_id": "1", "event": 5}, "event", "non-empty", id="event-not-str"),
    pytest.param("interakt_user", {"user_id": "1", "created_at": "yesterday"}, "created_at", "ISO-8601", id="bad-created-at"),
    pytest.param("interakt_user", {"user_id": "1", "created_at": [2026]}, "created_at", "datetime", id="created-at-list"),
]


@pytest.mark.parametrize(("tag_name", "tag", "field", "expected_words"), BAD_TAGS)
def test_bad_tag_is_reported_not_raised(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], tag_name: str, tag: Any, field: str,
    expected_words: str,
) -> None:
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    logger.addHandler(handler)
    logger.info("Order Placed", extra={tag_name: tag})  # must not raise
    logger.info("Order Placed", extra={"interakt_event": {"user_id": "ok"}})
    server.wait_for(1)
    assert handler.flush(10)
    assert [r.body.get("userId") for r in server.requests] == ["ok"]
    ((error, payload),) = errors
    assert isinstance(error, ValidationError) and isinstance(error, ValueError)
    assert error.field == field
    assert expected_words in error.expected
    assert str(error).startswith(f"{field}: expected ")
    assert "got " in str(error)
    assert payload == tag
    assert handler.stats()["failed"] == 1


def test_unknown_field_message_is_clear() -> None:
    from interakt_logging._payload import USERS_PATH, payload_from_tag

    with pytest.raises(ValidationError) as info:
        payload_from_tag(USERS_PATH, {"usr_id": "42"}, None, 0.0)
    assert "usr_id" in str(info.value) and "user_id" in str(info.value)


def test_one_warning_per_distinct_problem(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = make_handler()
    logger.addHandler(handler)
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        for _ in range(50):
            logger.info("x", extra={"interakt_user": {"user_id": 1.5}})
        for _ in range(50):
            logger.info("x", extra={"interakt_user": {"phone_number": "abc"}})
    warnings = [r for r in caplog.records if r.name == "interakt_logging"]
    assert len(warnings) == 2
    assert "user_id" in warnings[0].getMessage() and "phone_number" in warnings[1].getMessage()
    assert handler.stats()["failed"] == 100


def test_both_tags_on_one_record_is_an_error(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
) -> None:
    errors: list[Exception] = []
    logger.addHandler(make_handler(on_error=lambda e, p: errors.append(e)))
    logger.info("x", extra={"interakt_user": {"user_id": "1"}, "interakt_event": {"user_id": "1"}})
    assert isinstance(errors[0], ValidationError) and "one tag per record" in str(errors[0])


def test_on_error_that_raises_does_not_reach_the_app(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(error: Exception, payload: Any) -> None:
        raise RuntimeError("callback bug")

    logger.addHandler(make_handler(on_error=broken))
    with caplog.at_level(logging.ERROR, logger="interakt_logging"):
        logger.info("x", extra={"interakt_user": {"user_id": 1.5}})
    assert any("on_error callback raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"host": "http://api.interakt.ai"}, "host"),
        ({"host": "http://10.0.0.1:8080"}, "host"),
        ({"host": "ftp://example.com"}, "host"),
        ({"host": "https://user:pw@api.interakt.ai"}, "host"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"workers": 0}, "workers"),
        ({"on_error": "print"}, "on_error"),
        ({"sync_mode": "yes"}, "sync_mode"),
        ({"rate_limit": 0}, "rate_limit"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        InteraktHandler(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("host", ["http://127.0.0.1:1", "http://localhost:8080", "http://[::1]:9",
                                  "https://api.interakt.ai", "https://example.com/"])
def test_allowed_hosts(host: str) -> None:
    InteraktHandler(host=host).close()


def test_a_mapping_that_cannot_be_read_is_a_validation_error(
    make_handler: Callable[..., InteraktHandler]
) -> None:
    errors: list[Exception] = []
    handler = make_handler(on_error=lambda e, p: errors.append(e))
    for tag in (UnreadableMapping(), {"user_id": "1", "traits": UnreadableMapping()}):
        with pytest.raises(ValidationError):  # reported, then raised
            handler.submit(EVENTS_PATH, tag, default_event="E", created=0.0)
    assert [type(e) for e in errors] == [ValidationError, ValidationError]
    assert "RuntimeError" in str(errors[0])
    assert isinstance(errors[1], ValidationError) and errors[1].field == "traits"


def test_repeats_are_summarised_once_the_interval_has_passed(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's promise: the first occurrence at once, repeats counted and summarised
    at most once per interval (5 minutes; shortened here)."""
    from interakt_logging import _report

    monkeypatch.setattr(_report, "REPEAT_INTERVAL", 0.2)
    handler = make_handler()
    logger.addHandler(handler)
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        for _ in range(4):
            logger.info("x", extra={"interakt_user": {"user_id": 1.5}})
        threading.Event().wait(0.3)  # let the interval pass (a lower bound: no race)
        logger.info("x", extra={"interakt_user": {"user_id": 1.5}})
    warnings = [r.getMessage() for r in caplog.records if r.name == "interakt_logging"]
    assert len(warnings) == 2
    assert "more like it" not in warnings[0]
    assert "(3 more like it since the last warning)" in warnings[1]


def test_debug_logs_one_line_per_request_with_status_and_time(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    handler = make_handler(debug=True)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="interakt_logging"):
            logger.info("Order Placed", extra={"interakt_event": {"user_id": "1"}})
            assert handler.flush(10)
    finally:
        logging.getLogger("interakt_logging").setLevel(logging.NOTSET)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST ")]
    assert len(lines) == 1
    assert re.fullmatch(r"POST /v1/public/track/events/ -> 200 in \d+\.\d ms", lines[0])


# -- issue 9: validation is total ----------------------------------------------------------------
# Whatever a tag holds, the log call returns, prints no "--- Logging error ---", and the payload
# is reported (on_error, counted failed, the warning) with a ValidationError naming the field.


class HostileRepr:
    """A value that breaks whoever tries to print it."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")


class BrokenTimezone(datetime.tzinfo):
    """A tzinfo subclass that forgot utcoffset (the base class raises NotImplementedError)."""


class NonsenseTimezone(datetime.tzinfo):
    def utcoffset(self, dt: Any) -> Any:
        return 5  # not a timedelta


class ClassLiar:
    """An object whose __class__ raises: isinstance() falls back on it, and raises too."""

    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        raise RuntimeError("__class__")


class EndlessMapping(Mapping[str, Any]):
    """A Mapping whose keys never end (one that grows while read behaves the same)."""

    def __getitem__(self, key: str) -> Any:
        return 1

    def __iter__(self) -> Iterator[str]:
        return (f"k{i}" for i in itertools.count())

    def __len__(self) -> int:
        return 1


def _cycle() -> dict[str, Any]:
    looped: dict[str, Any] = {"name": "x"}
    looped["self"] = looped
    return looped


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def _report_of(
    handler: InteraktHandler, errors: list[tuple[Exception, Any]],
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    message: Any, args: tuple[Any, ...], extra: dict[str, Any],
) -> ValidationError:
    """Hand one bad record to ``handler`` and check it ends as every bad input does (reported,
    counted, warned of; no logging error); return its error."""
    record = logging.makeLogRecord({"msg": message, "args": args, **extra})
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        handler.handle(record)  # must not raise
    assert "Logging error" not in capsys.readouterr().err
    ((error, _),) = errors
    assert type(error) is ValidationError
    assert handler.stats()["failed"] == 1
    assert [r for r in caplog.records if r.name == "interakt_logging" and error.field in r.getMessage()]
    str(error), repr(error)  # describing it never raises, whatever it holds
    return error


CREATED_AT_OUT_OF_RANGE = [
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param(1e20, id="1e20"),
    pytest.param(10**400, id="10**400"),
    pytest.param(-1, id="before-1970"),
    pytest.param(253402300800, id="year-10000"),
    pytest.param("0001-01-01T00:00:00Z", id="iso-year-1"),
    pytest.param(datetime.datetime(1969, 12, 31, 23, 59, 59), id="datetime-1969"),
    pytest.param(datetime.datetime(9999, 12, 31, 23, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))), id="datetime-year-10000-in-utc"),
    pytest.param(datetime.datetime(2026, 1, 1, tzinfo=BrokenTimezone()), id="datetime-broken-tzinfo"),
    pytest.param(datetime.datetime(2026, 1, 1, tzinfo=NonsenseTimezone()), id="datetime-nonsense-tzinfo"),
]


@pytest.mark.parametrize("created_at", CREATED_AT_OUT_OF_RANGE)
def test_created_at_that_cannot_be_sent_is_refused_at_the_call(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, created_at: Any,
) -> None:
    """Issue 9 item 1: these were accepted, then raised in the sender (format_created) and
    killed it; eight of them killed every sender, and nothing was delivered again."""
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    logger.addHandler(handler)
    extra = {"interakt_event": {"user_id": "1", "created_at": created_at}}
    error = _report_of(handler, errors, capsys, caplog, "Order Placed", (), extra)
    assert error.field == "created_at"
    assert "1970" in error.expected and "9999" in error.expected
    for _ in range(8):  # as many as there are senders: none of them may die
        logger.info("Order Placed", extra=extra)
    for i in range(20):
        logger.info("Order Placed", extra={"interakt_event": {"user_id": f"ok-{i}"}})
    assert handler.flush(10)
    assert sorted(r.body["userId"] for r in server.delivered) == sorted(f"ok-{i}" for i in range(20))
    with pytest.raises(ValidationError) as info:
        track.event(user_id="1", event="E", created_at=created_at)
    assert info.value.field == "created_at"


def test_epoch_milliseconds_are_called_what_they_look_like() -> None:
    with pytest.raises(ValidationError) as info:
        payload_from_tag(EVENTS_PATH, {"user_id": "1", "created_at": 1732618359123}, "E", 0.0)
    assert info.value.field == "created_at"
    assert "epoch seconds" in info.value.expected and "looks like milliseconds" in info.value.expected


@pytest.mark.parametrize(("created_at", "sent"), [
    (0, "1970-01-01T00:00:00.000Z"),
    (253402300799.999, "9999-12-31T23:59:59.999Z"),
    ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
    (datetime.datetime(1970, 1, 1), "1970-01-01T00:00:00.000Z"),
])
def test_the_ends_of_the_created_at_range_are_sent(created_at: Any, sent: str) -> None:
    payload = Payload(*payload_from_tag(EVENTS_PATH, {"user_id": "1", "created_at": created_at}, "E", 0.0))
    assert payload.on_error_arg()["body"]["createdAt"] == sent


def test_a_record_made_by_hand_with_an_impossible_time_is_refused(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """No created_at: the record's ``created`` is the time, and a record built with
    makeLogRecord (or received over a socket) may carry anything there."""
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    record = logging.makeLogRecord({"msg": "Order Placed", "created": float("nan"),
                                    "interakt_event": {"user_id": "1"}})
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        handler.handle(record)
    assert "Logging error" not in capsys.readouterr().err
    ((error, _),) = errors
    assert isinstance(error, ValidationError) and error.field == "created_at"


class BadMessage:
    def __str__(self) -> str:
        raise RuntimeError("no message")


HOSTILE_TAGS = [
    pytest.param({"user_id": "1", "traits": _cycle()}, "traits.self", "cycle", id="cyclic-traits"),
    pytest.param({"user_id": "1", "traits": {"a": _nested(10_000)}}, "traits.a[0][0][0][0][0][0]...", "253 levels", id="traits-10000-deep"),
    pytest.param({"user_id": "1", "traits": {"x": HostileRepr()}}, "traits.x", "JSON-serializable", id="trait-repr-raises"),
    pytest.param({"user_id": HostileRepr()}, "user_id", "str or int", id="user-id-repr-raises"),
    pytest.param({"phone_number": "9999999999", "country_code": []}, "country_code", "ITU", id="country-code-unhashable"),
    pytest.param({"phone_number": "9999999999", "country_code": HostileRepr()}, "country_code", "ITU", id="country-code-repr-raises"),
    pytest.param({"user_id": 10**5000}, "user_id", "too large", id="user-id-beyond-int-str-limit"),
    pytest.param({"user_id": "1", "traits": {"n": 10**5000}}, "traits.n", "64 bits", id="trait-beyond-int-str-limit"),
    pytest.param({"user_id": "1", "created_at": 10**400}, "created_at", "epoch seconds", id="created-at-overflows-float"),
    pytest.param({"user_id": "1", "traits": UnreadableMapping()}, "traits", "RuntimeError", id="traits-mapping-raises"),
    pytest.param({"user_id": "1", "traits": {"m": UnreadableMapping()}}, "traits.m", "RuntimeError", id="nested-mapping-raises"),
    pytest.param({"user_id": "1", "traits": {"d": datetime.datetime(2026, 1, 1, tzinfo=BrokenTimezone())}}, "traits.d", "NotImplementedError", id="trait-datetime-broken-tzinfo"),
    pytest.param({"user_id": "1", "traits": {"d": datetime.datetime(2026, 1, 1, tzinfo=NonsenseTimezone())}}, "traits.d", "TypeError", id="trait-datetime-nonsense-tzinfo"),
    pytest.param({"user_id": ClassLiar()}, "user_id", "str or int", id="user-id-class-raises"),
    pytest.param({"phone_number": ClassLiar()}, "phone_number", "digits", id="phone-class-raises"),
    pytest.param({"user_id": "1", "traits": {"x": ClassLiar()}}, "traits.x", "__class__", id="trait-class-raises"),
    pytest.param({"user_id": "1", "created_at": ClassLiar()}, "created_at", "__class__", id="created-at-class-raises"),
    pytest.param({"user_id": "1", "traits": EndlessMapping()}, "traits", "100,000 items", id="traits-endless-mapping"),
    pytest.param({"user_id": "1", "traits": {"m": EndlessMapping()}}, "traits.m", "100,000 items", id="nested-endless-mapping"),
]


@pytest.mark.parametrize(("tag", "field", "expected_words"), HOSTILE_TAGS)
def test_anything_that_breaks_while_building_is_a_validation_error(
    make_handler: Callable[..., InteraktHandler],
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    tag: dict[str, Any], field: str, expected_words: str,
) -> None:
    """Issue 9 item 2: these raised RecursionError, TypeError, ValueError or OverflowError out
    of the validation: "--- Logging error ---", no on_error, not counted; and track.* raised
    them into the app."""
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    error = _report_of(handler, errors, capsys, caplog, "Order Placed", (), {"interakt_event": tag})
    assert (error.field, expected_words in str(error)) == (field, True), str(error)
    kwargs = {key: value for key, value in tag.items() if key != "event"}
    with pytest.raises(ValidationError) as info:
        track.event(event="Order Placed", **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(("message", "args"), [
    pytest.param("Order %d", ("not a number",), id="bad-format"),
    pytest.param(BadMessage(), (), id="str-raises"),
])
def test_a_message_that_cannot_be_formatted_names_the_event(
    make_handler: Callable[..., InteraktHandler],
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, message: Any,
    args: tuple[Any, ...],
) -> None:
    """The event name defaults to record.getMessage(): when that raises, the event is bad
    input like any other, not a logging error."""
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    error = _report_of(handler, errors, capsys, caplog, message, args, {"interakt_event": {"user_id": "1"}})
    assert error.field == "event" and "formatted" in error.expected


def test_a_str_subclass_is_sent_as_its_text_whatever_it_overrides() -> None:
    class Sneaky(str):
        def __str__(self) -> str:
            raise RuntimeError("str")

        def strip(self, chars: Any = None) -> str:
            raise RuntimeError("strip")

    tag = {"user_id": Sneaky("u9"), "phone_number": Sneaky("9999"), "country_code": Sneaky("+1"),
           "created_at": Sneaky("2026-01-01T00:00:00Z")}
    payload = Payload(*payload_from_tag(EVENTS_PATH, tag, "E", 0.0))
    assert payload.on_error_arg()["body"] == {"event": "E", "traits": {}, "userId": "u9", "countryCode": "+1",
                                         "phoneNumber": "9999", "createdAt": "2026-01-01T00:00:00.000Z"}


def test_a_validation_error_describes_any_value() -> None:
    """ValidationError's message is built from repr(given): it must survive any repr."""

    class Meta(type):
        @property
        def __name__(cls) -> str:  # type: ignore[override]
            raise RuntimeError("name")

    class Nameless(metaclass=Meta):
        def __repr__(self) -> str:
            raise RuntimeError("repr")

    for given in (HostileRepr(), 10**5000, Nameless(), "x" * 10**6, [_nested(5000)], _cycle()):
        text = str(ValidationError("traits.x", given, "something else"))
        assert text.startswith("traits.x: expected something else, got ") and len(text) < 200


NOT_SENT_AS_GIVEN = [
    pytest.param({"user_id": "1", "traits": {"total": float("nan")}}, "traits.total", "finite", id="nan-trait"),
    pytest.param({"user_id": "1", "traits": {"a": [1.0, float("inf")]}}, "traits.a[1]", "finite", id="inf-in-list"),
    pytest.param({"user_id": "1", "traits": {"a": {"b": -float("inf")}}}, "traits.a.b", "finite", id="inf-nested"),
    pytest.param({"user_id": "1", "traits": {"d": decimal.Decimal("1e400")}}, "traits.d", "64 bits", id="decimal-huge-int"),
    pytest.param({"user_id": "1", "traits": {"d": decimal.Decimal("1.5e400")}}, "traits.d", "64 bits", id="decimal-huge"),
    pytest.param({"user_id": "1", "traits": {"n": 2**64}}, "traits.n", "18446744073709551615", id="int-2**64"),
    pytest.param({"user_id": "1", "traits": {"n": -(2**63) - 1}}, "traits.n", "-9223372036854775808", id="int-below-int64"),
    pytest.param({"user_id": "u\ud800"}, "user_id", "surrogate", id="surrogate-user-id"),
    pytest.param({"user_id": "1", "event": "Order\udc00"}, "event", "surrogate", id="surrogate-event"),
    pytest.param({"user_id": "1", "traits": {"k\ud800": 1}}, "traits['k\\ud800']", "surrogate", id="surrogate-trait-key"),
    pytest.param({"user_id": "1", "traits": {"k": ["v\ud800"]}}, "traits.k[0]", "surrogate", id="surrogate-trait-value"),
]


@pytest.mark.parametrize(("tag", "field", "expected_words"), NOT_SENT_AS_GIVEN)
def test_values_json_cannot_carry_are_refused_naming_them(
    make_handler: Callable[..., InteraktHandler],
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    tag: dict[str, Any], field: str, expected_words: str,
) -> None:
    """Issue 9 item 3: NaN and infinity were sent as null without a word, an int beyond 64
    bits was refused with a message that listed int as accepted, and a lone surrogate in
    user_id, the event or a key was blamed on traits with "got {}"."""
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    error = _report_of(handler, errors, capsys, caplog, "Order Placed", (), {"interakt_event": tag})
    assert error.field == field and expected_words in error.expected, str(error)


def test_a_none_trait_is_still_sent_as_null() -> None:
    """The NaN check looks closer only where orjson wrote null: a None must pass."""
    _, body, _ = payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"a": None, "b": [None, 1.5], "c": "null"}}, "E", 0.0)
    assert body == b'{"event":"E","traits":{"a":null,"b":[null,1.5],"c":"null"},"userId":"1"}'


def test_traits_as_deep_as_orjson_writes_are_sent_one_more_is_refused() -> None:
    """The depth limit the error states is the one that holds."""
    deepest = _nested(TRAITS_MAX_DEPTH - 1)  # traits itself is the first level
    payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"a": deepest}}, "E", 0.0)
    with pytest.raises(ValidationError) as info:
        payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"a": [deepest]}}, "E", 0.0)
    assert f"{TRAITS_MAX_DEPTH} levels" in info.value.expected


@pytest.mark.parametrize("value", [
    datetime.datetime(2026, 11, 26, 10, 52, 39),
    datetime.datetime(2026, 11, 26, 10, 52, 39, 123456),
    datetime.datetime(2026, 11, 26, 10, 52, 39, tzinfo=datetime.timezone.utc),
    datetime.datetime(2026, 11, 26, 10, 52, 39, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
    datetime.datetime(1, 1, 1),
    datetime.date(2026, 1, 5),
    datetime.time(10, 52, 39, 120),
])
def test_datetimes_are_written_as_orjson_wrote_them(value: Any) -> None:
    """Datetimes are written by us now (orjson crashes on a tzinfo that raises): the same
    text as before, for every tzinfo orjson handled correctly."""
    _, body, _ = payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"t": value}}, "E", 0.0)
    native = orjson.dumps(value, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)
    assert body == b'{"event":"E","traits":{"t":' + native + b'},"userId":"1"}'


def test_a_time_of_day_keeps_its_microseconds() -> None:
    """Found by the property tests: orjson 3.13 writes time(0, 0, 0, 10000) as
    "00:00:00.10000", a tenth of a second instead of a hundredth; we write it right."""
    _, body, _ = payload_from_tag(EVENTS_PATH, {"user_id": "1", "traits": {"t": datetime.time(0, 0, 0, 10000)}}, "E", 0.0)
    assert orjson.loads(body)["traits"]["t"] == "00:00:00.010000"


@pytest.mark.slow
def test_a_datetime_with_a_broken_tzinfo_does_not_crash_the_process() -> None:
    """Found while writing these tests: orjson 3.13 segfaults on a datetime whose tzinfo's
    utcoffset raises, so a trait like this one killed the application (in a subprocess,
    so that a regression fails this test and not the whole run)."""
    done = run_python("""
        import datetime, logging
        from interakt_logging import InteraktHandler, testing

        class Broken(datetime.tzinfo):
            pass

        errors = []
        with testing.capture() as sent:
            handler = InteraktHandler(on_error=lambda e, p: errors.append(e))
            record = logging.makeLogRecord({"msg": "Order Placed", "interakt_event": {
                "user_id": "1", "traits": {"at": datetime.datetime(2026, 1, 1, tzinfo=Broken())}}})
            handler.handle(record)
            handler.close()
        print(len(sent), errors[0].field)
    """)
    assert (done.returncode, done.stdout.split()) == (0, ["0", "traits.at"]), done.stderr


@pytest.mark.parametrize("rendered", ["event='x' interakt_user={'user_id': '1'}", b"interakt_event", None, 42, ("interakt_user",)])
def test_the_processor_passes_anything_but_a_mapping_on_untouched(
    make_handler: Callable[..., InteraktHandler], rendered: Any,
) -> None:
    """Issue 9, also seen: placed after a renderer, the processor got a str and raised
    AttributeError ('str' object has no attribute 'pop') into the caller, because
    ``"interakt_user" in event_dict`` matched a substring of the rendered line."""
    errors: list[Exception] = []
    processor = InteraktProcessor(make_handler(on_error=lambda e, p: errors.append(e)))
    assert processor(None, "info", rendered) is rendered
    assert errors == []


def test_the_processor_reports_an_event_name_it_cannot_write(
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the property tests: the processor took the event name as str(event_dict["event"]);
    when that raised, the payload was only logged as an ERROR with a traceback: not given to
    on_error, not counted. It is bad input like any other now."""
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    event_dict = {"event": BadMessage(), "interakt_event": {"user_id": "1"}}
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        assert InteraktProcessor(handler)(None, "info", event_dict) == {"event": event_dict["event"]}
    ((error, payload),) = errors
    assert isinstance(error, ValidationError) and error.field == "event"
    assert payload == {"user_id": "1"} and handler.stats()["failed"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("error", [
    ValidationError("traits.email", "someone@example.com", "a str"),
    ValidationError("timeout", "5s", "a number > 0", shown=True),
    APIError(400, "bad request", retry_after=2.0, sent=b'{"userId":"42"}'),
    DeliveryError("could not reach the Interakt API: refused", "ConnectionError"),
    QueueFullError("queue full (3 payloads); payload dropped"),
], ids=["validation", "validation-shown", "api", "delivery", "queue-full"])
def test_errors_cross_a_process_boundary_whole(error: Exception) -> None:
    """on_error in a multiprocessing worker may send its error to the parent: pickling used to
    fail on unpickling (the classes' __init__ takes more than ``args`` holds)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
