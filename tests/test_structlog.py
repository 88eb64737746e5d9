"""structlog's two routes: InteraktProcessor in a native chain, and structlog in front of stdlib
logging (render_to_log_kwargs, ExtraAdder, ProcessorFormatter) with the plain InteraktHandler."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from interakt_logging import InteraktHandler, InteraktProcessor, ValidationError
from interakt_logging._payload import parse_created_at
from interakt_logging.testing import MockInteraktServer

from .conftest import UnreadableMapping, run_python

structlog = pytest.importorskip("structlog")

ORDER = {"user_id": "42", "traits": {"orderNumber": "CUS001", "total": 99.5}}


@pytest.mark.slow
def test_importing_the_package_does_not_import_structlog() -> None:
    result = run_python("""
        import sys
        import interakt_logging
        from interakt_logging import InteraktProcessor, track
        InteraktProcessor(None)
        assert "structlog" not in sys.modules, "structlog was imported"
    """)
    assert result.returncode == 0, result.stderr


def _native(processor: InteraktProcessor, *before: Any) -> tuple[Any, io.StringIO]:
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[*before, processor, structlog.processors.JSONRenderer()],
    )
    return log, out


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_native_event_is_sent_and_the_tag_kept_out_of_the_log(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    log, out = _native(InteraktProcessor(handler), structlog.processors.TimeStamper(fmt="iso"))
    log.info("Order Placed", interakt_event=ORDER, request_id="r-1")
    log.info("Signed Up", interakt_user={"user_id": 42, "phone_number": "9999999999"})
    assert handler.flush(10)
    (line_event, line_user) = _lines(out)
    assert "interakt_event" not in line_event and "interakt_user" not in line_user
    assert line_event["request_id"] == "r-1"
    event = server.events("Order Placed")[0]
    assert event["traits"] == ORDER["traits"] and event["userId"] == "42"
    stamped = parse_created_at(line_event["timestamp"])  # the TimeStamper's time, to the ms
    assert abs(parse_created_at(event["createdAt"]) - stamped) <= 0.0005
    assert server.users("42")[0]["phoneNumber"] == "9999999999"


@pytest.mark.parametrize("timestamp", [
    1767323045.5,  # TimeStamper(): epoch seconds
    "2026-01-02T03:04:05.500000Z",  # TimeStamper(fmt="iso")
    "2026-01-02T08:34:05.500+05:30",
    "2026-01-02 03:04:05.500",  # naive means UTC
])
def test_created_at_comes_from_the_timestamp(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler], timestamp: Any
) -> None:
    handler = make_handler()
    InteraktProcessor(handler)(
        None, "info", {"event": "Paid", "timestamp": timestamp, "interakt_event": {"user_id": "1"}}
    )
    assert handler.flush(10)
    assert server.events("Paid")[0]["createdAt"] == "2026-01-02T03:04:05.500Z"


def test_a_timestamp_that_is_not_a_time_means_now(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    before = time.time()
    InteraktProcessor(handler)(
        None, "info", {"event": "Paid", "timestamp": "Jan 02 03:04", "interakt_event": {"user_id": "1"}}
    )
    assert handler.flush(10)
    created = parse_created_at(server.requests[0].body["createdAt"])
    assert before - 0.001 <= created <= time.time() + 0.001


def test_keep_true_leaves_the_tag_for_the_renderer(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    log, out = _native(InteraktProcessor(handler, keep=True))
    log.info("Order Placed", interakt_event=ORDER)
    assert handler.flush(10)
    assert _lines(out)[0]["interakt_event"] == ORDER
    assert len(server.events("Order Placed")) == 1


def test_untagged_event_dicts_pass_untouched(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    event_dict = {"event": "hello", "user": "u"}
    assert InteraktProcessor(handler)(None, "info", event_dict) is event_dict
    assert event_dict == {"event": "hello", "user": "u"}
    assert handler.stats()["enqueued"] == 0


@pytest.mark.parametrize(("fields", "field"), [
    ({"interakt_event": {"traits": {}}}, "user_id"),
    ({"interakt_event": "42"}, "interakt_event"),
    ({"interakt_user": {"user_id": "1", "usr_id": "2"}}, "interakt_user.usr_id"),
    ({"interakt_event": {"user_id": "1"}, "interakt_user": {"user_id": "1"}}, "interakt_user"),
], ids=["no-id", "not-a-dict", "unknown-key", "both-tags"])
def test_bad_input_never_raises_into_the_app(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler],
    caplog: pytest.LogCaptureFixture, fields: dict[str, Any], field: str,
) -> None:
    errors: list[Exception] = []
    handler = make_handler(on_error=lambda error, given: errors.append(error))
    log, out = _native(InteraktProcessor(handler))
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        log.info("Order Placed", **fields)
    assert [type(e) for e in errors] == [ValidationError]
    assert isinstance(errors[0], ValidationError) and errors[0].field == field
    assert field in caplog.text
    assert _lines(out) == [{"event": "Order Placed"}]  # the log line still goes out, tag removed
    assert handler.stats()["failed"] == 1
    assert server.requests == []


def test_a_tag_that_breaks_while_read_is_logged_not_raised(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = make_handler()
    log, out = _native(InteraktProcessor(handler))
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        log.info("Order Placed", interakt_event=UnreadableMapping())
    assert "interakt_event: expected" in caplog.text and "reading it raised" in caplog.text
    assert handler.stats()["failed"] == 1
    assert _lines(out) == [{"event": "Order Placed"}]


def test_an_event_dict_that_breaks_while_read_is_reported_like_bad_input(
    make_handler: Callable[..., InteraktHandler],
) -> None:
    """An event dict (a custom MutableMapping) that holds the tag but raises when it is read
    was only logged with a traceback: not counted, no on_error. Now it is bad input."""

    class BreaksWhenRead(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("boom")

    errors: list[Exception] = []
    handler = make_handler(on_error=lambda error, payload: errors.append(error))
    event_dict = BreaksWhenRead(event="Order Placed", interakt_event={"user_id": "42"})
    assert InteraktProcessor(handler)(None, "info", event_dict) is event_dict
    assert handler.stats()["failed"] == 1
    assert len(errors) == 1 and isinstance(errors[0], ValidationError)
    assert "RuntimeError" in str(errors[0])


# -- structlog in front of stdlib logging -------------------------------------------------------

@pytest.fixture
def stdlib_logger(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler]
) -> Iterator[tuple[logging.Logger, InteraktHandler, io.StringIO]]:
    """A stdlib logger with a plain InteraktHandler and a console handler that renders with
    structlog's ProcessorFormatter (ExtraAdder brings record extras into the rendered line)."""
    handler = make_handler()
    out = io.StringIO()
    console = logging.StreamHandler(out)
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    ))
    logger.addHandler(handler)
    logger.addHandler(console)
    yield logger, handler, out


def test_render_to_log_kwargs_puts_the_tag_on_the_record(
    server: MockInteraktServer,
    stdlib_logger: tuple[logging.Logger, InteraktHandler, io.StringIO],
) -> None:
    logger, handler, out = stdlib_logger
    log = structlog.wrap_logger(
        logger, wrapper_class=structlog.stdlib.BoundLogger,
        processors=[structlog.stdlib.render_to_log_kwargs],
    )
    log.info("Order Placed", interakt_event=ORDER)
    assert handler.flush(10)
    event = server.events("Order Placed")[0]
    assert event["traits"] == ORDER["traits"]
    # ExtraAdder in the console's foreign_pre_chain renders the record's extras: the tag only
    # as the summary the InteraktHandler before it left
    assert _lines(out)[0]["interakt_event"] == "<interakt_event sent>"


def test_stdlib_extra_with_extra_adder(
    server: MockInteraktServer,
    stdlib_logger: tuple[logging.Logger, InteraktHandler, io.StringIO],
) -> None:
    logger, handler, out = stdlib_logger
    logger.info("Signed Up", extra={"interakt_user": {"user_id": "7", "traits": {"plan": "pro"}}})
    assert handler.flush(10)
    assert server.users("7")[0]["traits"] == {"plan": "pro"}
    assert _lines(out)[0]["event"] == "Signed Up"


def test_processor_formatter_route_sends_once(
    server: MockInteraktServer,
    stdlib_logger: tuple[logging.Logger, InteraktHandler, io.StringIO],
) -> None:
    """With ``wrap_for_formatter`` the event dict travels inside ``record.msg``, not as record
    attributes, so the tag is picked up by InteraktProcessor in structlog's chain; the
    InteraktHandler on the same logger then sees an untagged record and sends nothing twice,
    while stdlib records with ``extra`` still reach it."""
    logger, handler, out = stdlib_logger
    log = structlog.wrap_logger(
        logger, wrapper_class=structlog.stdlib.BoundLogger,
        processors=[
            structlog.stdlib.add_log_level,
            InteraktProcessor(handler),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
    )
    log.info("Order Placed", interakt_event=ORDER)
    logger.info("Paid", extra={"interakt_event": {"user_id": "42"}})
    assert handler.flush(10)
    assert sorted(r.body["event"] for r in server.requests) == ["Order Placed", "Paid"]
    rendered = _lines(out)
    assert rendered[0] == {"event": "Order Placed", "level": "info"}
