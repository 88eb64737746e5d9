"""What one HTTP attempt may take and where it may go: ``timeout`` bounds the whole attempt
(connect, send, headers, body), and a redirect is never followed (nor the key sent elsewhere)."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import trustme

from interakt_logging import APIError, DeliveryError, InteraktHandler
from interakt_logging.testing import MockInteraktServer, Reply


def event(user_id: str) -> dict[str, Any]:
    return {"interakt_event": {"user_id": user_id}}


def errors_of(handler_kwargs: dict[str, Any]) -> list[Exception]:
    errors: list[Exception] = []
    handler_kwargs["on_error"] = lambda error, payload: errors.append(error)
    return errors


# -- timeout bounds the attempt --------------------------------------------------------------------


@pytest.mark.parametrize("headers_too", [True, False], ids=["headers", "body"])
def test_a_server_dripping_its_answer_cannot_hold_a_worker_past_timeout(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], headers_too: bool,
) -> None:
    # Before: a byte every 0.2 s never tripped the 0.5 s socket timeout, so each attempt took
    # as long as the server liked (here ~15 s; a real one can drip for ever): flush(30) False,
    # 2 in flight, nothing reported.
    server.responder = lambda request: Reply(200, drip=0.2, drip_headers=headers_too)
    kwargs: dict[str, Any] = {"timeout": 0.5, "max_retries": 0}
    errors = errors_of(kwargs)
    handler = make_handler(**kwargs)
    logger.addHandler(handler)
    started = time.monotonic()
    logger.info("Order Placed", extra=event("1"))
    logger.info("Order Placed", extra=event("2"))
    assert handler.flush(10).pending == 0  # before: 2 pending for ever
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5  # both attempts, in parallel, ended at their deadline
    assert len(errors) == 2 and all(isinstance(e, DeliveryError) for e in errors)
    errors = [e for e in errors if isinstance(e, DeliveryError)]
    assert {(e.reason, str(e).count("timeout=0.5s")) for e in errors} == {("Timeout", 1)}
    stats = handler.stats()
    assert (stats["failed"], stats["in_flight"], stats["sent"]) == (2, 0, 0)


def test_an_attempt_ended_by_its_deadline_is_retried_like_any_network_error(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    server.script(Reply(200, drip=0.2))  # the first attempt drips; the retry is answered at once
    handler = make_handler(timeout=0.5, max_retries=1, workers=1)
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    assert handler.flush(10)
    stats = handler.stats()
    assert (stats["sent"], stats["retried"], stats["failed"]) == (1, 1, 0)
    first, second = server.requests
    assert first.body == second.body


def test_a_pooled_connection_that_starts_dripping_is_ended_too(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    # The first request opens the connection; the second reuses it (registered at send time).
    handler = make_handler(timeout=0.5, max_retries=0, workers=1, sync_mode=True,
                           on_error=lambda error, payload: None)
    logger.addHandler(handler)
    logger.info("Order Placed", extra=event("1"))
    server.script(Reply(200, drip=0.2, drip_headers=False))
    started = time.monotonic()
    logger.info("Order Placed", extra=event("2"))
    assert time.monotonic() - started < 5
    stats = handler.stats()
    assert (stats["sent"], stats["failed"]) == (1, 1)


def test_the_watchdog_thread_ends_with_its_handler(server: MockInteraktServer) -> None:
    others = set(threading.enumerate())  # other tests' handlers may still run theirs
    handler = InteraktHandler(host=server.url, sync_mode=True)
    try:
        handler.emit(logging.makeLogRecord({"msg": "Order Placed", **event("1")}))
        assert handler.stats()["sent"] == 1
        watchdogs = [t for t in threading.enumerate()
                     if t.name == "interakt-logging-watchdog" and t not in others]
        assert watchdogs
    finally:
        handler.close()
    for thread in watchdogs:
        thread.join(5)
    assert not any(thread.is_alive() for thread in watchdogs)


# -- redirects are not followed ------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_final_api_error_and_the_key_never_leaves_the_host(
    logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], status: int,
) -> None:
    # Before: requests followed a 302 as a GET without the body, and the target's 200 was
    # counted sent although the API never received the event.
    with MockInteraktServer() as elsewhere:  # another origin: same loopback, another port
        target = f"{elsewhere.url}/v1/public/track/events/?from=redirect"
        server.script(Reply(status, location=target))
        kwargs: dict[str, Any] = {"max_retries": 3}
        errors = errors_of(kwargs)
        handler = make_handler(**kwargs)
        logger.addHandler(handler)
        logger.info("Order Placed", extra=event("1"))
        assert handler.flush(10).failed == 1
        assert elsewhere.requests == []  # neither the body nor the Authorization header
    [error] = errors
    assert isinstance(error, APIError) and error.status_code == status
    assert f"redirected to {target}; not followed" in str(error)
    assert len(server.requests) == 1  # final: not retried
    stats = handler.stats()
    assert (stats["sent"], stats["failed"], stats["retried"]) == (0, 1, 0)


def test_a_redirect_to_the_same_host_is_not_followed_either(
    server: MockInteraktServer,
) -> None:
    server.script(Reply(302, location="/v1/public/track/events/"))
    handler = InteraktHandler(host=server.url, sync_mode=True, max_retries=3)
    try:
        with pytest.raises(APIError, match="redirected to /v1/public/track/events/"):
            handler.pipeline.send(("/v1/public/track/events/", b'{"userId":"1","event":"E"}',
                                   1.7e9))
    finally:
        handler.close()
    assert [r.method for r in server.requests] == ["POST"]  # no GET replayed after it


# -- over TLS --------------------------------------------------------------------------------------


@pytest.fixture
def tls_dripper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], str]]:
    """``start(answered)``: an HTTPS server on loopback (its CA trusted via REQUESTS_CA_BUNDLE)
    that answers the first ``answered`` requests of a connection at once and drips the next
    one a byte every 0.2 s; returns its URL."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(answered: int) -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls, tls.makefile("rb") as incoming:
            for count in itertools.count():
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = incoming.readline()
                    if not line:
                        return
                    head += line
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                incoming.read(length)
                body = b'{"result": true, "message": "Accepted"}'
                answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                if count < answered:
                    tls.sendall(answer)
                    continue
                for i in range(len(answer)):
                    if stop.wait(0.2):
                        return
                    with contextlib.suppress(OSError):
                        tls.sendall(answer[i : i + 1])

    def start(answered: int) -> str:
        thread = threading.Thread(target=serve, args=(answered,), daemon=True)
        thread.start()
        threads.append(thread)
        return f"https://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    listener.close()
    for thread in threads:
        thread.join(5)


@pytest.mark.parametrize("answered", [0, 1], ids=["new-connection", "pooled-connection"])
def test_a_tls_server_dripping_its_answer_is_ended_at_timeout(
    tls_dripper: Callable[[int], str], answered: int,
) -> None:
    errors: list[Exception] = []
    handler = InteraktHandler(host=tls_dripper(answered), sync_mode=True, timeout=0.5,
                              max_retries=0, on_error=lambda error, payload: errors.append(error))
    try:
        for i in range(answered):
            handler.emit(logging.makeLogRecord({"msg": "Order Placed", **event(str(i))}))
        assert handler.stats()["sent"] == answered and errors == []  # TLS itself works
        started = time.monotonic()
        with contextlib.redirect_stderr(io.StringIO()):  # sync mode's logging error line
            handler.emit(logging.makeLogRecord({"msg": "Order Placed", **event("late")}))
        assert time.monotonic() - started < 5
    finally:
        handler.close()
    [error] = errors
    assert isinstance(error, DeliveryError) and error.reason == "Timeout"
