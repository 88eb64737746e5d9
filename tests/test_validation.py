"""Bad tags are refused on the calling thread with an error that names the field, says what was
given and what is expected; the logging call itself never raises, and nothing is sent."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable

import pytest

from interakt_logging import InteraktHandler, ValidationError
from interakt_logging.testing import MockInteraktServer

from .conftest import UnreadableMapping

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
    handler.submit("event", UnreadableMapping(), default_event="E", created=0.0)  # never raises
    handler.submit("event", {"user_id": "1", "traits": UnreadableMapping()}, default_event="E", created=0.0)
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
