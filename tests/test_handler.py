"""InteraktHandler behaviour: untagged records, sync mode, flush/close, queue bounds, secrets."""

from __future__ import annotations

import base64
import logging
import shutil
import threading
import traceback
from typing import Any, Callable

import pytest

from interakt_logging import (
    EVENTS_PATH,
    APIError,
    DeliveryError,
    InteraktHandler,
    InteraktProcessor,
    QueueFullError,
    ValidationError,
)
from interakt_logging.testing import MockInteraktServer, Reply

from .conftest import API_KEY, completes_holding


def event(user_id: Any, **traits: Any) -> dict[str, Any]:
    return {"interakt_event": {"user_id": user_id, "traits": traits}}


def test_untagged_records_are_ignored(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    logger.addHandler(handler)
    logger.info("just a log line %s", "with args", extra={"other": 1})
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(10)
    assert len(server.requests) == 1
    assert handler.stats()["enqueued"] == 1


def test_the_callers_record_keeps_all_but_the_tags_values(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "Order %s", ("Placed",), None)
    tag = {"user_id": "1", "traits": {"a": 1}}
    record.interakt_event = tag
    before = dict(record.__dict__)
    handler.handle(record)
    after = dict(record.__dict__)
    assert after.pop("interakt_event") == "<interakt_event sent>"
    del before["interakt_event"]
    assert after == before
    assert tag == {"user_id": "1", "traits": {"a": 1}}  # the caller's dict itself is untouched
    assert handler.flush(10)
    assert server.requests[0].body["event"] == "Order Placed"


def test_handler_filters_apply(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    handler.addFilter(lambda record: record.getMessage() != "skip me")
    logger.addHandler(handler)
    logger.info("skip me", extra=event("1"))
    logger.info("send me", extra=event("2"))
    assert handler.flush(10)
    assert [r.body["event"] for r in server.requests] == ["send me"]


def test_level_applies(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler(level="WARNING")
    logger.addHandler(handler)
    logger.info("too low", extra=event("1"))
    logger.warning("high enough", extra=event("2"))
    assert handler.flush(10)
    assert [r.body["event"] for r in server.requests] == ["high enough"]


def test_own_records_never_reenter(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """An InteraktHandler on the root logger at DEBUG, with the library's debug logging on:
    the library's and urllib3's records flow through it without being sent or recursing."""
    root = logging.getLogger()
    old_level = root.level
    handler = make_handler(debug=True)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        logging.getLogger("app").info("Order Placed", extra=event("1"))
        server.script(Reply(500))  # make the sender log warnings too
        logging.getLogger("app").info("Order Placed", extra=event("2"))
        assert handler.flush(10)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("interakt_logging").setLevel(logging.NOTSET)
    assert sorted(r.body["userId"] for r in server.delivered) == ["1", "2"]
    assert handler.stats()["enqueued"] == 2  # the debug and warning records were ignored


def test_sync_mode_sends_on_the_calling_thread(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler(sync_mode=True)
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert len(server.delivered) == 1  # already there: no flush needed
    assert handler.stats()["sent"] == 1


@pytest.mark.parametrize("tag", [event("1"), {"interakt_event": {"user_id": "1",
                                                                   "phone_number": "99-99"}}],
                         ids=["refused-by-the-api", "bad-input"])
def test_sync_mode_failure_is_reported_once_never_as_a_logging_error(
    logger: logging.Logger, server: MockInteraktServer, tag: dict[str, Any],
    make_handler: Callable[..., InteraktHandler], capsys: pytest.CaptureFixture[str],
) -> None:
    """It was reported to on_error with a warning, and again by logging's handleError:
    "--- Logging error ---", a traceback and the record's arguments on stderr."""
    errors: list[Exception] = []
    handler = make_handler(sync_mode=True, on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)
    server.script(Reply(400, body={"result": False, "message": "Invalid phone"}))
    logger.info("Order Placed %s", "arg", extra=tag)  # must not raise
    (error,) = errors
    assert isinstance(error, APIError if "phone_number" not in tag["interakt_event"]
                      else ValidationError)
    assert handler.stats()["failed"] == 1
    assert "Logging error" not in capsys.readouterr().err


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
def test_a_bug_while_handling_a_record_is_reported_with_its_tag(
    logger: logging.Logger, server: MockInteraktServer, sync: bool,
    make_handler: Callable[..., InteraktHandler], capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault injection: the dispatch raises something that is not ours. The payload ends
    reported (counted, on_error with the tag, a warning with the traceback), not as a logging
    error that would print the record's arguments."""
    reports: list[tuple[Exception, Any]] = []
    handler = make_handler(sync_mode=sync, on_error=lambda e, p: reports.append((e, p)))

    def broken(payload: Any) -> Any:
        raise RuntimeError("a bug")

    handler._dispatch = broken
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("7"))
    (error, tag), = reports
    assert isinstance(error, DeliveryError) and error.reason == "internal"
    assert isinstance(error.__cause__, RuntimeError) and tag == {"user_id": "7", "traits": {}}
    assert handler.stats()["failed"] == 1
    assert "Logging error" not in capsys.readouterr().err
    assert any(r.exc_info and r.name == "interakt_logging" for r in caplog.records)


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
def test_a_record_that_cannot_reopen_the_handler_is_reported(
    logger: logging.Logger, sync: bool, tmp_path: Any, capsys: pytest.CaptureFixture[str],
    make_handler: Callable[..., InteraktHandler],
) -> None:
    """A record after close() starts a fresh pipeline; when that fails (the outbox's directory
    is gone), the record is reported with its tag. In sync mode it was lost silently: taken
    for a failure the send had reported already."""
    reports: list[tuple[Exception, Any]] = []
    folder = tmp_path / "outbox"
    folder.mkdir()
    handler = make_handler(sync_mode=sync, outbox=str(folder / "o.db"),
                           on_error=lambda e, p: reports.append((e, p)))
    logger.addHandler(handler)
    handler.close()
    shutil.rmtree(folder)
    logger.info("Order Placed", extra=event("9"))
    (error, tag), = reports
    assert isinstance(error, DeliveryError) and isinstance(error.__cause__, ValidationError)
    assert tag == {"user_id": "9", "traits": {}} and handler.stats()["failed"] == 1
    assert "Logging error" not in capsys.readouterr().err


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
def test_a_call_that_cannot_reopen_the_handler_is_reported(
    sync: bool, tmp_path: Any, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Regression: the same fault through ``submit`` (the structlog processor, ``track``) went
    unreported: the processor took the ValidationError about the outbox for a reported one and
    dropped the event silently, and ``submit`` raised it with nothing counted. Now it is
    reported with its tag; ``submit`` then returns accepted=False, or in sync mode raises."""
    reports: list[tuple[Exception, Any]] = []
    folder = tmp_path / "outbox"
    folder.mkdir()
    handler = make_handler(sync_mode=sync, outbox=str(folder / "o.db"),
                           on_error=lambda e, p: reports.append((e, p)))
    handler.close()
    shutil.rmtree(folder)
    processor = InteraktProcessor(handler)
    processor(None, "info", {"event": "Order Placed", "interakt_event": {"user_id": "9"}})
    if sync:
        with pytest.raises(DeliveryError):
            handler.submit(EVENTS_PATH, {"user_id": "9", "event": "Order Placed"})
    else:
        assert not handler.submit(EVENTS_PATH, {"user_id": "9", "event": "Order Placed"}).accepted
    assert len(reports) == 2 and handler.stats()["failed"] == 2
    for error, tag in reports:
        assert isinstance(error, DeliveryError) and isinstance(error.__cause__, ValidationError)
        assert tag["user_id"] == "9"


def test_flush_and_close_are_idempotent(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler()
    assert handler.flush(1)  # nothing started yet
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(10) and handler.flush(10)
    handler.close()
    handler.close()
    assert handler.flush(1)


def test_a_record_after_close_reopens_like_a_file_handler(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    """A later dictConfig (uvicorn's at start-up, Django's) closes every handler it replaces,
    though a logger not in the new config goes on using it: the handler must go on sending."""
    import logging.config

    handler = make_handler()
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("before"))
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    logger.info("Order Placed", extra=event("after"))
    handler.close()
    logger.info("Order Placed", extra=event("after-close"))
    assert handler.flush(10)
    assert sorted(r.body["userId"] for r in server.delivered) == ["after", "after-close", "before"]


def test_queue_full_drops_new_payloads_counts_and_warns_once(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    server.hang = True  # workers stay busy, the backlog and then the queue fill up
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(max_queue_size=10, workers=1, batch_size=1,
                           on_error=lambda e, p: errors.append((e, p)), shutdown_timeout=0.5)
    logger.addHandler(handler)
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        for i in range(200):
            logger.info("Order Placed", extra=event(str(i)))  # never blocks
    dropped = [p for e, p in errors if isinstance(e, QueueFullError)]
    stats = handler.stats()
    assert stats["dropped"] == len(dropped) >= 150
    assert stats["enqueued"] + stats["dropped"] == 200
    assert dropped[0]["path"] == "/v1/public/track/events/"
    assert dropped[0]["body"]["userId"].isdigit()
    full_warnings = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full_warnings) == 1


def test_block_on_full_waits_instead_of_dropping(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.latency = 0.002
    handler = make_handler(max_queue_size=5, batch_size=5, block_on_full=True, block_timeout=10)
    logger.addHandler(handler)
    for i in range(300):
        logger.info("Order Placed", extra=event(str(i)))
    assert handler.flush(30)
    assert handler.stats()["dropped"] == 0
    assert len(server.delivered) == 300


def test_stats_fields(make_handler: Callable[..., InteraktHandler]) -> None:
    stats = make_handler().stats()
    assert set(stats) == {"enqueued", "sent", "retried", "throttled", "failed", "dropped", "outboxed",
                          "adopted", "queue_depth", "in_flight", "circuit", "pace",
                          "requests_in_flight", "in_flight_limit", "sender_threads"}
    assert stats["circuit"] == "closed"
    assert stats["pace"] is None  # unpaced until a 429 or a rate_limit
    assert stats["throttled"] == stats["requests_in_flight"] == 0


def test_the_key_never_shows(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = [API_KEY, base64.b64encode(f"{API_KEY}:".encode()).decode()]
    errors: list[Exception] = []
    handler = make_handler(debug=True, max_retries=1, on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)
    server.script(Reply(401), Reply(503), Reply(503))
    with caplog.at_level(logging.DEBUG):
        logger.info("Order Placed", extra=event("1"))
        logger.info("Order Placed", extra=event("2"))
        assert handler.flush(10).failed == 2  # both refused: finished, not delivered
    unreachable = make_handler(host="http://127.0.0.1:1", max_retries=0,
                               on_error=lambda e, p: errors.append(e))
    logger.addHandler(unreachable)
    with caplog.at_level(logging.DEBUG):
        logger.info("Order Placed", extra=event("3"))
        assert unreachable.flush(10).failed == 1
    logging.getLogger("interakt_logging").setLevel(logging.NOTSET)
    assert len(errors) >= 2
    texts = [caplog.text, repr(handler), str(handler), repr(handler.settings),
             repr(handler.pipeline), repr(handler.pipeline.transport)]
    for error in errors:
        texts += [str(error), repr(error),
                  "".join(traceback.format_exception(type(error), error, error.__traceback__))]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_close_and_flush_from_on_error_do_not_deadlock(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    """on_error runs on a sender thread: flush() there returns at once, close() there works."""
    seen: list[bool] = []
    reported = threading.Event()
    handler: InteraktHandler

    def on_error(error: Exception, payload: Any) -> None:
        seen.append(bool(handler.flush(5)))
        handler.close(timeout=1)
        reported.set()

    handler = make_handler(on_error=on_error)
    logger.addHandler(handler)
    server.script(Reply(400))
    with caplog.at_level(logging.ERROR, logger="interakt_logging"):
        logger.info("Order Placed", extra=event("1"))
        assert reported.wait(10)
    assert seen == [False]  # flush() on a sender thread would wait for itself
    assert "on_error callback raised" not in caplog.text
    logger.info("Order Placed", extra=event("2"))  # closed now: a fresh pipeline sends it
    assert handler.flush(10) and seen == [False]
    assert [r.body["userId"] for r in server.delivered] == ["2"]


def test_a_signal_handler_logging_during_a_reopen_does_not_deadlock(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    """Regression: the reopen lock was not re-entrant. A signal handler logging an event, run
    while this thread was reopening the closed handler (building its new pipeline, holding the
    lock), waited for that lock for good. Held here as the interrupted reopen would."""
    handler = make_handler()
    logger.addHandler(handler)
    handler.close()
    assert completes_holding(
        handler._reopen_lock, lambda: logger.info("Order Placed", extra=event("7"))
    ), "the log call blocked on a lock its own thread held"
    assert handler.flush(10)
    assert [r.body["userId"] for r in server.delivered] == ["7"]
