"""Tags carry phone numbers and traits: the handlers after an InteraktHandler (python-json-logger,
structlog's ExtraAdder, Sentry) see a summary, never the values; RedactTags does the same for
handlers that run before ours; a second InteraktHandler on the same record still sends."""

from __future__ import annotations

import copy
import io
import json
import logging
import logging.config
import pickle
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonjsonlogger.json import JsonFormatter

from interakt_logging import InteraktHandler, RedactTags
from interakt_logging.testing import MockInteraktServer, capture

from .conftest import run_python

PHONE = "9876543210"
EMAIL = "asha@example.com"
USER = {"user_id": "42", "phone_number": PHONE, "traits": {"email": EMAIL}}


@pytest.fixture
def json_out() -> Iterator[tuple[logging.Handler, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("%(message)s"))
    yield handler, out


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_formatter_after_ours_sees_a_summary(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], json_out: tuple[logging.Handler, io.StringIO],
) -> None:
    console, out = json_out
    interakt = make_handler()
    logger.addHandler(interakt)
    logger.addHandler(console)
    logger.info("Signed Up", extra={"interakt_user": USER, "request_id": "r1"})
    logger.info("Order Placed", extra={"interakt_event": {"user_id": "42"}})
    logger.info("Oops", extra={"interakt_event": {"user_id": "42", "bogus": PHONE}})
    lines = _lines(out)
    assert [line.get("interakt_user", line.get("interakt_event")) for line in lines] == [
        "<interakt_user sent>", "<interakt_event sent>", "<interakt_event refused>",
    ]
    assert lines[0]["request_id"] == "r1"  # other extras untouched
    assert PHONE not in out.getvalue() and EMAIL not in out.getvalue()
    assert USER["phone_number"] == PHONE  # the caller's dict is not touched
    interakt.flush(10)
    assert server.users("42")[0]["phoneNumber"] == PHONE


def test_a_payload_that_was_not_queued_is_not_summarised_as_sent(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch,
    make_handler: Callable[..., InteraktHandler], json_out: tuple[logging.Handler, io.StringIO],
) -> None:
    """Regression: a payload refused for want of an API key (or dropped for a full queue) was
    summarised to the handlers after ours as ``<interakt_event sent>``."""
    monkeypatch.delenv("INTERAKT_API_KEY", raising=False)
    console, out = json_out
    logger.addHandler(make_handler(on_error=lambda error, payload: None))
    logger.addHandler(console)
    logger.info("Order Placed", extra={"interakt_event": {"user_id": "42"}})
    assert _lines(out)[0]["interakt_event"] == "<interakt_event not sent>"


def test_redact_tags_covers_a_handler_before_ours_via_dict_config(
    server: MockInteraktServer, json_out: tuple[logging.Handler, io.StringIO],
) -> None:
    out = io.StringIO()
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "filters": {"redact": {"()": "interakt_logging.RedactTags"}},
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter"}},
        "handlers": {
            "file": {"class": "logging.StreamHandler", "stream": out, "formatter": "json",
                     "filters": ["redact"]},
            "interakt": {"()": "interakt_logging.InteraktHandler", "host": server.url},
        },
        "loggers": {"tests.redaction.shop": {"handlers": ["file", "interakt"],
                                             "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("tests.redaction.shop")
    try:
        log.info("Signed Up", extra={"interakt_user": USER})
        assert _lines(out)[0]["interakt_user"] == "<interakt_user redacted>"
        assert PHONE not in out.getvalue()
        interakt = log.handlers[1]
        assert isinstance(interakt, InteraktHandler) and interakt.flush(10)
        assert server.users("42")[0]["phoneNumber"] == PHONE
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()


def test_a_second_interakt_handler_still_sends_two_accounts(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
    json_out: tuple[logging.Handler, io.StringIO],
) -> None:
    console, out = json_out
    with MockInteraktServer() as first, MockInteraktServer() as second:
        handlers = [make_handler(host=first.url), make_handler(host=second.url, api_key="other")]
        logger.addFilter(RedactTags())  # a logger filter too: still sent by both
        for handler in handlers:
            logger.addHandler(handler)
        logger.addHandler(console)
        logger.info("Signed Up", extra={"interakt_user": USER})
        assert all(handler.flush(10) for handler in handlers)
        assert first.users("42")[0]["phoneNumber"] == second.users("42")[0]["phoneNumber"] == PHONE
    assert _lines(out)[0]["interakt_user"] == "<interakt_user sent>"


def test_propagated_records_reach_the_root_handlers_redacted(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler],
    json_out: tuple[logging.Handler, io.StringIO],
) -> None:
    console, out = json_out
    parent = logging.getLogger("tests.redaction.app")
    child = logging.getLogger("tests.redaction.app.orders")
    parent.setLevel(logging.INFO)
    parent.propagate = False
    parent.addHandler(console)
    child.addHandler(make_handler())
    try:
        child.info("Order Placed", extra={"interakt_event": {"user_id": "1", "phone_number": PHONE}})
    finally:
        parent.removeHandler(console)
        child.handlers.clear()
    assert _lines(out)[0]["interakt_event"] == "<interakt_event sent>"


def test_the_summary_carries_nothing_when_pickled_or_copied(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
) -> None:
    """A SocketHandler or a multiprocessing queue pickles the record: the values stay here."""
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "Signed Up", (), None)
    record.interakt_user = USER
    make_handler().handle(record)
    for moved in (pickle.loads(pickle.dumps(record.__dict__)), copy.deepcopy(record.__dict__)):
        assert type(moved["interakt_user"]) is str
        assert moved["interakt_user"] == "<interakt_user sent>"
        assert PHONE.encode() not in pickle.dumps(record.__dict__)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=30),
       where=st.sampled_from(["trait", "user_id", "event", "nested"]))
def test_no_tag_value_reaches_a_handler_after_ours(
    secret: str, where: str, logger: logging.Logger,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    out = io.StringIO()
    console = logging.StreamHandler(out)
    console.setFormatter(JsonFormatter("%(message)s"))
    logger.handlers[:] = [make_handler(), console]
    tag: dict[str, Any] = {"user_id": "1", "traits": {}}
    if where == "trait":
        tag["traits"]["note"] = secret
    elif where == "user_id":
        tag["user_id"] = secret
    elif where == "event":
        tag["event"] = secret
    else:
        tag["traits"]["deep"] = {"list": [secret, {"x": secret}]}
    with capture() as captured:  # no network: the property is about the record
        logger.info("Order Placed", extra={"interakt_event": tag})
    assert len(captured) == 1
    assert secret not in out.getvalue()


def test_structlog_extra_adder_sees_a_summary(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler],
) -> None:
    structlog = pytest.importorskip("structlog")
    out = io.StringIO()
    console = logging.StreamHandler(out)
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()],
    ))
    console.addFilter(RedactTags())  # before ours here: the filter covers it
    logger.addHandler(console)
    logger.addHandler(make_handler())
    logger.info("Signed Up", extra={"interakt_user": USER})
    assert json.loads(out.getvalue())["interakt_user"] == "<interakt_user redacted>"


SENTRY = """
import logging
import sentry_sdk
from sentry_sdk.transport import Transport
from interakt_logging import InteraktHandler

events = []

class Capture(Transport):  # nothing leaves the process
    def capture_envelope(self, envelope):
        events.extend(item.payload.json for item in envelope.items if item.payload.json)

sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=Capture, default_integrations=True)
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(InteraktHandler())
log.info("Signed Up", extra={"interakt_user": {"user_id": "42", "phone_number": "9876543210"}})
log.error("Payment failed", extra={"interakt_event": {"user_id": "42", "traits": {"card": "4111111111111111"}}})
sentry_sdk.flush()
import json
text = json.dumps(events)
print("events", len(events), "leaked", "9876543210" in text or "4111111111111111" in text)
print("summary", "<interakt_event sent>" in text, "<interakt_user sent>" in text)
"""


@pytest.mark.slow
def test_sentry_logging_integration_sees_a_summary(server: MockInteraktServer) -> None:
    """sentry-sdk runs its logging handlers after the logger's own: after ours. Its error event
    carries the records' extras and breadcrumbs; a custom transport keeps them in the process."""
    pytest.importorskip("sentry_sdk")
    done = run_python(SENTRY, env={"INTERAKT_HOST": server.url})
    assert done.returncode == 0, done.stderr
    assert "events 1 leaked False" in done.stdout, done.stdout
    assert "summary True True" in done.stdout, done.stdout
    server.wait_for(2)
