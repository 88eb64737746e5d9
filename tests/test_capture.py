"""testing.capture(): every payload recorded instead of sent, no network, no key."""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator, List, Tuple

import pytest

from interakt_logging import (
    USERS_PATH,
    InteraktHandler,
    InteraktProcessor,
    ValidationError,
    _pipeline,
    track,
)
from interakt_logging.testing import MockInteraktServer, capture


@pytest.fixture
def shop() -> Iterator[logging.Logger]:
    log = logging.getLogger("tests.capture.shop")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERAKT_API_KEY", raising=False)
    monkeypatch.delenv("INTERAKT_HOST", raising=False)


def _log_both(log: logging.Logger) -> None:
    log.info("Signed Up", extra={"interakt_user": {
        "user_id": 42, "phone_number": "9999999999", "traits": {"name": "John"},
        "created_at": "2026-01-02T03:04:05.678Z",
    }})
    log.info("Order Placed", extra={"interakt_event": {
        "user_id": "42", "traits": {"orderNumber": "CUS001", "total": 12.5},
        "created_at": "2026-01-02T03:04:06Z",
    }})


def test_bodies_are_exactly_what_the_server_would_receive(shop: logging.Logger) -> None:
    with MockInteraktServer() as server:
        handler = InteraktHandler(api_key="k", host=server.url)
        shop.addHandler(handler)
        _log_both(shop)
        assert handler.flush(10)
        sent = sorted((r.path, r.body) for r in server.wait_for(2))
        with capture() as captured:
            _log_both(shop)
        assert sorted((c.path, c.body) for c in captured) == sent
        assert len(server.requests) == 2  # nothing more went out during the capture


def test_no_key_needed_and_nothing_sent(shop: logging.Logger, no_key: None) -> None:
    with capture() as captured:
        shop.addHandler(InteraktHandler())
        _log_both(shop)
    assert [c.kind for c in captured] == ["user", "event"]
    user, event = captured
    assert user.body == {
        "traits": {"name": "John"}, "userId": "42", "countryCode": "+91",
        "phoneNumber": "9999999999", "createdAt": "2026-01-02T03:04:05.678Z",
    }
    assert (user.name, user.user_id, user.path) == (None, "42", "/v1/public/track/users/")
    assert (event.name, event.traits["orderNumber"]) == ("Order Placed", "CUS001")
    assert event.body["createdAt"] == "2026-01-02T03:04:06.000Z"
    assert _pipeline.interceptors == []


def test_without_capture_a_keyless_handler_refuses_what_it_would_send(
    shop: logging.Logger, no_key: None
) -> None:
    errors: List[Exception] = []
    shop.addHandler(InteraktHandler(on_error=lambda error, payload: errors.append(error)))
    _log_both(shop)
    assert [e.field for e in errors if isinstance(e, ValidationError)] == ["api_key"] * 2


def test_sync_mode_is_captured_too(shop: logging.Logger, no_key: None) -> None:
    with capture() as captured:
        handler = InteraktHandler(sync_mode=True)
        shop.addHandler(handler)
        shop.info("Paid", extra={"interakt_event": {"user_id": "7"}})
        handler.submit(USERS_PATH, {"user_id": "7"}, created=0.0)
    assert [(c.kind, c.name) for c in captured] == [("event", "Paid"), ("user", None)]
    assert captured[1].body["createdAt"] == "1970-01-01T00:00:00.000Z"


def test_invalid_input_is_reported_not_captured(shop: logging.Logger, no_key: None) -> None:
    errors: List[Tuple[Exception, Any]] = []
    with capture() as captured:
        shop.addHandler(InteraktHandler(on_error=lambda e, p: errors.append((e, p))))
        shop.info("Bad", extra={"interakt_event": {"usr_id": "7"}})
    assert len(captured) == 0
    assert isinstance(errors[0][0], ValidationError)
    assert errors[0][0].field == "interakt_event.usr_id"


def test_helpers(shop: logging.Logger, no_key: None) -> None:
    with capture() as captured:
        shop.addHandler(InteraktHandler())
        for user_id in (1, 2):
            shop.info("Viewed", extra={"interakt_event": {"user_id": user_id}})
            shop.info("u", extra={"interakt_user": {"user_id": user_id}})
        shop.info("Paid", extra={"interakt_event": {"user_id": 2}})
        assert len(captured) == 5
        assert [c.user_id for c in captured.events("Viewed")] == ["1", "2"]
        assert [c.name for c in captured.events()] == ["Viewed", "Viewed", "Paid"]
        assert [c.user_id for c in captured.users()] == ["1", "2"]
        assert captured.users(2) == captured.users("2") == [captured[3]]
        assert captured[-1].name == "Paid"
        assert [c.kind for c in captured[:2]] == ["event", "user"]
        assert "Paid" in repr(captured)
        captured.clear()
        assert len(captured) == 0 and list(captured) == []
        shop.info("After clear", extra={"interakt_event": {"user_id": 3}})
        assert [c.name for c in captured] == ["After clear"]


def test_nested_captures_each_see_their_own_block(shop: logging.Logger, no_key: None) -> None:
    with capture() as outer:
        shop.addHandler(InteraktHandler())
        shop.info("A", extra={"interakt_event": {"user_id": 1}})
        with capture() as inner:
            shop.info("B", extra={"interakt_event": {"user_id": 1}})
        shop.info("C", extra={"interakt_event": {"user_id": 1}})
        assert len(_pipeline.interceptors) == 1
    assert [c.name for c in outer] == ["A", "B", "C"]
    assert [c.name for c in inner] == ["B"]
    assert _pipeline.interceptors == []


def test_restored_on_exception_and_sending_resumes(shop: logging.Logger) -> None:
    with MockInteraktServer() as server:
        handler = InteraktHandler(api_key="k", host=server.url)
        shop.addHandler(handler)
        with pytest.raises(RuntimeError), capture():
            shop.info("Captured", extra={"interakt_event": {"user_id": 1}})
            raise RuntimeError("boom")
        assert _pipeline.interceptors == []
        shop.info("Sent", extra={"interakt_event": {"user_id": 1}})
        assert handler.flush(10)
        assert [b["event"] for b in server.events()] == ["Sent"]


def test_many_threads(shop: logging.Logger, no_key: None) -> None:
    threads, per_thread = 8, 250
    with capture() as captured:
        shop.addHandler(InteraktHandler())

        def work(t: int) -> None:
            for i in range(per_thread):
                shop.info("E", extra={"interakt_event": {"user_id": f"{t}-{i}"}})

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    ids = [c.user_id for c in captured]
    assert len(ids) == threads * per_thread == len(set(ids))


def test_track_and_the_structlog_processor_are_captured(no_key: None) -> None:
    with capture() as captured:
        try:
            track.user(user_id="1", traits={"name": "John"})
            track.event(user_id="1", event="Paid")
        finally:
            track.shutdown()
        handler = InteraktHandler()
        InteraktProcessor(handler)(None, "info", {"event": "Viewed", "interakt_event": {
            "user_id": "2"}})
        handler.close()
    assert [(c.kind, c.name, c.user_id) for c in captured] == [
        ("user", None, "1"), ("event", "Paid", "1"), ("event", "Viewed", "2"),
    ]
