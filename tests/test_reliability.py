"""Retries, rate limits, outages and shutdown against a loopback server injecting faults."""

from __future__ import annotations

import logging
import logging.config
import random
import threading
import time
from typing import Any, Callable, Optional

import pytest

from interakt_logging import APIError, DeliveryError, FlushResult, InteraktHandler
from interakt_logging.testing import MockInteraktServer, RecordedRequest, Reply

from .conftest import log_from_threads, wait_until


def event(user_id: Any) -> dict[str, Any]:
    return {"interakt_event": {"user_id": user_id}}


def test_5xx_then_success_is_retried_with_the_same_created_at(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.script(Reply(502), Reply(500))
    handler = make_handler()
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(20)
    assert [r.status for r in server.requests] == [502, 500, 200]
    assert len({r.body["createdAt"] for r in server.requests}) == 1
    assert handler.stats()["retried"] == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_never_retried(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], status: int,
) -> None:
    errors: list[tuple[Exception, Any]] = []
    server.script(Reply(status, body={"result": False, "message": "nope"}))
    handler = make_handler(on_error=lambda e, p: errors.append((e, p)))
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(10) == FlushResult(delivered=0, failed=1)
    assert len(server.requests) == 1
    ((error, payload),) = errors
    assert isinstance(error, APIError) and error.status_code == status and error.message == "nope"
    assert payload["path"] == "/v1/public/track/events/" and payload["body"]["userId"] == "1"
    assert handler.stats()["failed"] == 1


def test_non_json_error_body(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    errors: list[Exception] = []
    server.script(Reply(400, body=b"<html>bad gateway config</html>"))
    handler = make_handler(on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(10).failed == 1
    assert isinstance(errors[0], APIError) and "bad gateway config" in errors[0].message


def test_retries_run_out_for_a_payload_the_api_keeps_rejecting(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """max_retries bounds retries of one bad event while the others pass (breaker stays closed)."""
    server.responder = lambda r: Reply(500) if r.body["userId"] == "poison" else None
    errors: list[Exception] = []
    handler = make_handler(max_retries=2, on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("poison"))
    for i in range(20):
        logger.info("Order Placed", extra=event(str(i)))
    assert handler.flush(30) == FlushResult(delivered=20, failed=1)
    poison = [r for r in server.requests if r.body["userId"] == "poison"]
    assert len(poison) == 3
    assert len(server.delivered) == 20
    assert isinstance(errors[0], APIError) and errors[0].status_code == 500
    assert handler.stats()["circuit"] == "closed"


def test_network_errors_are_retried_then_reported(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler]
) -> None:
    errors: list[Exception] = []
    handler = make_handler(host="http://127.0.0.1:1", max_retries=2,
                           on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(20).failed == 1
    assert isinstance(errors[0], DeliveryError) and errors[0].reason == "ConnectionError"
    assert "gave up after 2 retries" in str(errors[0])
    assert handler.stats()["retried"] == 2


def random_faults(seed: int, error_rate: float, rate_limited: float) -> Callable[..., Optional[Reply]]:
    """A responder failing about ``error_rate`` of requests with 500 and ``rate_limited`` with
    429 (Retry-After: 0), never more than 3 times in a row for one payload, so the test's
    duration does not depend on a long backoff tail."""
    rng = random.Random(seed)
    lock = threading.Lock()
    failures: dict[str, int] = {}

    def respond(request: RecordedRequest) -> Optional[Reply]:
        key = request.body["userId"]
        with lock:
            roll = rng.random()
            if roll >= error_rate + rate_limited or failures.get(key, 0) >= 3:
                return None
            failures[key] = failures.get(key, 0) + 1
        return Reply(500) if roll < error_rate else Reply(429, retry_after="0")

    return respond


@pytest.mark.slow
def test_faults_over_1000_events_all_delivered_once(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.responder = random_faults(1234, 0.20, 0.05)
    handler = make_handler(max_retries=10)
    logger.addHandler(handler)
    for i in range(1000):
        logger.info("Order Placed", extra=event(str(i)))
    assert handler.flush(90)
    ids = [r.body["userId"] for r in server.delivered]
    assert sorted(ids) == sorted(str(i) for i in range(1000))
    failed = [r for r in server.requests if not r.ok]
    assert 150 < len(failed) < 450
    assert handler.stats()["failed"] == 0


@pytest.mark.slow
def test_a_429_pauses_every_worker_until_retry_after(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """One 429 must not become N workers' 429s: after it is answered, nothing is sent until
    Retry-After has passed (only requests already in flight may still arrive)."""
    first: list[float] = []
    lock = threading.Lock()

    def limiter(request: RecordedRequest) -> Optional[Reply]:
        with lock:
            if not first:
                first.append(time.monotonic())
                return Reply(429, retry_after="2")
        return None

    server.responder = limiter
    server.latency = 0.01
    handler = make_handler(max_retries=1)
    logger.addHandler(handler)
    for i in range(40):
        logger.info("Order Placed", extra=event(str(i)))
    assert handler.flush(30)
    assert len(server.delivered) == 40
    answered = first[0] + 0.01
    quiet = [r for r in server.requests
             if answered + 0.5 < _monotonic_of(r) < answered + 1.8]
    assert quiet == []


def _monotonic_of(request: RecordedRequest) -> float:
    return time.monotonic() - (time.time() - request.received_at)


def _refused_then_accepted(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], retry_after: str,
) -> tuple[RecordedRequest, RecordedRequest]:
    """One event, a 429 with ``retry_after``, max_retries=1: the refused and the accepted try."""
    server.script(Reply(429, retry_after=retry_after))
    handler = make_handler(max_retries=1)
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(20)
    refused, accepted = server.requests
    assert refused.status == 429 and accepted.status == 200
    return refused, accepted


@pytest.mark.slow
def test_retry_after_2_with_max_retries_1_arrives_about_2s_later(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    refused, accepted = _refused_then_accepted(logger, server, make_handler, "2")
    assert 1.9 <= accepted.received_at - refused.received_at < 10


@pytest.mark.slow
def test_retry_after_as_http_date(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    from email.utils import formatdate

    resume_at = int(time.time()) + 3  # HTTP dates have whole seconds
    _, accepted = _refused_then_accepted(
        logger, server, make_handler, formatdate(resume_at, usegmt=True)
    )
    assert accepted.received_at >= resume_at - 0.1


@pytest.mark.slow
def test_client_side_rate_limit(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    handler = make_handler(rate_limit=20)
    logger.addHandler(handler)
    for i in range(31):
        logger.info("Order Placed", extra=event(str(i)))
    assert handler.flush(30)
    times = sorted(r.received_at for r in server.requests)
    assert times[-1] - times[0] >= 1.3  # 30 tokens beyond the first at 20/s: at least 1.5 s


@pytest.mark.slow
def test_outage_of_6_seconds_with_default_settings(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Every request fails with 503 for 6 s: the breaker opens (the events keep their retries)
    and everything is delivered after recovery."""
    start = time.monotonic()
    server.responder = lambda r: Reply(503) if time.monotonic() - start < 6 else None
    handler = make_handler()
    logger.addHandler(handler)
    for i in range(300):
        logger.info("Order Placed", extra=event(str(i)))
    wait_until(lambda: handler.stats()["circuit"] in ("open", "half-open"),
               lambda: f"the breaker never opened: {handler.stats()}", timeout=10)
    assert handler.flush(60)
    assert sorted(r.body["userId"] for r in server.delivered) == sorted(map(str, range(300)))
    stats = handler.stats()
    assert stats["failed"] == 0 and stats["circuit"] == "closed"
    failed_requests = [r for r in server.requests if r.status == 503]
    assert len(failed_requests) < 60, "the breaker probes instead of burning retries"


@pytest.mark.slow
def test_many_threads_with_faults_nothing_lost_or_duplicated(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.responder = random_faults(99, 0.05, 0.02)
    handler = make_handler(max_queue_size=20000, max_retries=10)
    logged = log_from_threads(handler, threads=8, per_thread=2500)
    assert handler.flush(120)
    ids = [r.body["userId"] for r in server.delivered]
    assert sorted(ids) == sorted(logged)
    stats = handler.stats()
    assert stats["sent"] == stats["enqueued"] == 20000
    assert stats["failed"] == stats["dropped"] == 0


@pytest.mark.slow
def test_close_returns_within_its_deadline_when_the_server_never_answers(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.hang = True
    errors: list[Exception] = []
    handler = make_handler(on_error=lambda e, p: errors.append(e), shutdown_timeout=1)
    logger.addHandler(handler)
    for i in range(20):
        logger.info("Order Placed", extra=event(str(i)))
    wait_until(lambda: len(server.requests) > 0, lambda: "no request out")
    started = time.monotonic()
    handler.close(timeout=1)
    assert time.monotonic() - started < 5  # bounded by the deadline, not by timeout=10
    # Those never sent are reported; the requests out stay with their workers (an answer would
    # still count), settled by the exit's drain at the latest.
    out = handler.stats()["in_flight"]
    assert out >= len(server.requests) and len(errors) == 20 - out
    assert all(isinstance(e, DeliveryError) and e.reason == "shutdown" for e in errors)
    assert handler.stats()["failed"] == 20 - out


@pytest.mark.slow
def test_dict_config_reconfiguration_does_not_hang(
    server: MockInteraktServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dictConfig closes the old handlers under logging's module lock while our sender threads
    are busy (and logging warnings): the close is bounded by shutdown_timeout."""
    server.hang = True
    config = {
        "version": 1,
        "handlers": {"interakt": {"()": "interakt_logging.InteraktHandler", "host": server.url,
                                  "shutdown_timeout": 1}},
        "loggers": {"test.dictconfig": {"handlers": ["interakt"], "level": "INFO"}},
    }
    logging.config.dictConfig(config)
    (handler,) = logging.getLogger("test.dictconfig").handlers
    try:
        for i in range(10):
            logging.getLogger("test.dictconfig").info("Order Placed", extra=event(str(i)))
        started = time.monotonic()
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        assert time.monotonic() - started < 6
    finally:
        logging.getLogger("test.dictconfig").handlers.clear()
        # closed under logging's lock, the pipeline was left to the exit drain: pytest's own,
        # which printed "closed with 10 payload(s) undelivered" after the summary
        handler.close(1)


def test_a_connection_reset_in_mid_answer_is_a_network_error(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """The status line arrives, then the body is cut: retried like any network error (the API
    may have recorded the first try: at-least-once, with the same createdAt)."""
    server.script(Reply(200, cut=True))
    handler = make_handler()
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(20)
    first, second = server.requests
    assert first.body == second.body
    assert handler.stats()["retried"] == 1 and handler.stats()["failed"] == 0


def test_the_mock_does_not_count_an_answer_it_cut_as_delivered(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Regression: a 200 cut in mid-answer was listed in ``server.delivered`` (and
    ``events()``), though the client never got it: a test of "delivered" passed on a payload
    that failed. Reproduced 1/1 before the fix."""
    server.script(Reply(200, cut=True))
    handler = make_handler(max_retries=0, on_error=lambda error, payload: None)
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert not handler.flush(20)
    assert handler.stats()["failed"] == 1
    assert [r.status for r in server.requests] == [200]
    assert server.delivered == [] and server.events() == []


def test_a_mock_server_never_started_stops_at_once() -> None:
    """Regression: stop() waited for ever for a serving loop that never ran (socketserver's
    shutdown), e.g. in a test's cleanup after a failure before start()."""
    server = MockInteraktServer()
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()


def test_a_connection_reset_in_sync_mode_never_raises_into_the_app(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    errors: list[Exception] = []
    server.script(*[Reply(200, cut=True)] * 2)
    handler = make_handler(sync_mode=True, max_retries=1, on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))  # must not raise
    assert isinstance(errors[0], DeliveryError)
    assert handler.stats()["failed"] == 1


@pytest.mark.slow
def test_sync_mode_gives_up_while_the_breaker_stays_open(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Regression: failures while the breaker is open use up no retry, so in sync mode a call
    made once it had opened retried the failing probe for ever: the app's log call never
    returned while the API was down. Reproduced 1/1 before the fix (the third call hung)."""
    server.responder = lambda request: Reply(503)
    errors: list[Exception] = []
    handler = make_handler(sync_mode=True, max_retries=1, on_error=lambda e, p: errors.append(e))
    logger.addHandler(handler)

    def log_three() -> None:
        for i in range(3):  # 2 failures each: the fifth, in the third call, opens the breaker
            logger.info("Order Placed", extra=event(str(i)))

    caller = threading.Thread(target=log_three, daemon=True)
    caller.start()
    caller.join(30)
    alive = caller.is_alive()
    handler.close(1)  # a hung caller gives up here
    assert not alive, "a sync-mode log call never returned while the breaker stayed open"
    assert len(errors) == 3 and handler.stats()["failed"] == 3
