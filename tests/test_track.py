"""The ``track`` drop-in, and the promise behind all three front doors: the handler, the structlog
processor and ``track`` send identical requests for the same call (one case table for all)."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import threading
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from interakt_logging import (
    APIError,
    InteraktHandler,
    InteraktProcessor,
    QueueFullError,
    ValidationError,
    track,
)
from interakt_logging.testing import MockInteraktServer, RecordedRequest

from .conftest import completes_holding

SETTINGS = (
    "api_key", "host", "sync_mode", "debug", "timeout", "max_retries", "max_queue_size", "on_error",
)
ORIGINAL_DEFAULTS = {
    "api_key": None, "host": None, "sync_mode": False, "debug": False, "timeout": 10,
    "max_retries": 3, "max_queue_size": 10000, "on_error": None,
}


@pytest.fixture
def fresh_track(server: MockInteraktServer) -> Iterator[Any]:
    """``track`` pointed at ``server``; its settings restored and its client shut down after."""
    saved = {name: getattr(track, name) for name in SETTINGS}
    track.host = server.url
    try:
        yield track
    finally:
        track.shutdown()
        for name, value in saved.items():
            setattr(track, name, value)


# -- one case table for every front door ----------------------------------------------------------

EVERY_JSON_TYPE = {
    "name": "Asha", "age": 31, "score": 99.5, "vip": True, "churned": False, "note": None,
    "tags": ["a", 1, 2.5, False, None, {"k": "v"}], "address": {"city": "Pune", "pin": 411001},
    "empty_list": [], "empty_obj": {}, "unicode": "नमस्ते ✓", "big": 2**53 + 1,
    "joined": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
}
STAMP = "2026-03-04T05:06:07.890Z"

# (id, tag name, tag, log message)
CASES = [
    ("user-id", "interakt_user", {"user_id": "u-1", "traits": {"name": "John"}}, "Signed Up"),
    ("user-numeric-id", "interakt_user", {"user_id": 42}, "Signed Up"),
    ("user-phone-only", "interakt_user", {"phone_number": "9999999999"}, "Signed Up"),
    ("user-phone-us", "interakt_user",
     {"phone_number": "2025550123", "country_code": "+1", "traits": {"plan": "pro"}}, "x"),
    ("user-id-and-phone", "interakt_user",
     {"user_id": "u-2", "phone_number": "9999999999", "country_code": "+91"}, "x"),
    ("user-every-json-type", "interakt_user", {"user_id": "u-3", "traits": EVERY_JSON_TYPE}, "x"),
    ("user-created-at", "interakt_user", {"user_id": "u-4", "created_at": STAMP}, "x"),
    ("event-name-from-message", "interakt_event",
     {"user_id": "u-1", "traits": {"orderNumber": "CUS001"}}, "Order Placed"),
    ("event-name-in-tag", "interakt_event",
     {"user_id": "u-1", "event": "Cart Abandoned"}, "ignored message"),
    ("event-numeric-id", "interakt_event", {"user_id": 7, "traits": {"total": 10}}, "Paid"),
    ("event-phone-only", "interakt_event", {"phone_number": "9999999999"}, "Order Placed"),
    ("event-reference-example", "interakt_event",
     {"user_id": "u1", "traits": {"orderNumber": "CUS001"}, "country_code": "+91",
      "phone_number": "9999999999"}, "Order Placed"),
    ("event-every-json-type", "interakt_event",
     {"user_id": "u-5", "traits": EVERY_JSON_TYPE}, "Profile Viewed"),
    ("event-created-at", "interakt_event",
     {"user_id": "u-6", "created_at": STAMP}, "Order Shipped"),
]


def _via_handler(handler: InteraktHandler, tag_name: str, tag: Any, message: str) -> None:
    log = logging.getLogger("test.routes")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info(message, extra={tag_name: tag})
    finally:
        log.removeHandler(handler)


def _via_processor(handler: InteraktHandler, tag_name: str, tag: Any, message: str) -> None:
    out = InteraktProcessor(handler)(None, "info", {"event": message, tag_name: tag})
    assert out == {"event": message}


def _via_track(handler: InteraktHandler, tag_name: str, tag: Any, message: str) -> None:
    """``track`` uses its own default client (pointed at the same server), not ``handler``."""
    if tag_name == "interakt_user":
        ok, _ = track.user(**tag)
    else:
        ok, _ = track.event(**{"event": message, **tag})
    assert ok
    assert track.flush(10)


@pytest.mark.parametrize(("tag_name", "tag", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_every_front_door_sends_the_same_request(
    fresh_track: Any, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler],
    tag_name: str, tag: Any, message: str,
) -> None:
    sent: dict[str, list[RecordedRequest]] = {}
    for route in (_via_handler, _via_processor, _via_track):
        before = len(server.requests)
        handler = make_handler(workers=1)
        route(handler, tag_name, tag, message)
        assert handler.flush(10)
        server.wait_for(before + 1, timeout=10)
        sent[route.__name__] = server.requests[before:]
    seen = {}
    for route, requests in sent.items():
        assert len(requests) == 1, route
        request = requests[0]
        body = dict(request.body)
        created = body.pop("createdAt")
        if "created_at" in tag:
            assert created == STAMP
        wanted_headers = ("Authorization", "Content-Type", "User-Agent")
        seen[route] = (request.path, body, {h: request.headers[h] for h in wanted_headers})
    assert seen["_via_processor"] == seen["_via_handler"]
    assert seen["_via_track"] == seen["_via_handler"]
    path, body, _ = seen["_via_handler"]
    assert path.endswith("/users/" if tag_name == "interakt_user" else "/events/")
    if "user_id" in tag:
        assert body["userId"] == str(tag["user_id"])
    if tag_name == "interakt_event":
        assert body["event"] == tag.get("event", message)


def test_the_reference_example_body(fresh_track: Any, server: MockInteraktServer) -> None:
    """The wire contract's example, key for key and in the original SDK's order."""
    ok, queued = track.event(user_id="u1", event="Order Placed", traits={"orderNumber": "CUS001"},
                             country_code="+91", phone_number="9999999999")
    expected = {"event": "Order Placed", "traits": {"orderNumber": "CUS001"}, "userId": "u1",
                "countryCode": "+91", "phoneNumber": "9999999999"}
    assert (ok, queued) == (True, {"path": "/v1/public/track/events/", "body": expected})
    assert list(queued["body"]) == list(expected)
    (request,) = server.wait_for(1)
    assert {k: v for k, v in request.body.items() if k != "createdAt"} == expected


# -- the module API -------------------------------------------------------------------------------

def test_settings_and_signatures_are_the_originals() -> None:
    assert {name: getattr(track, name) for name in SETTINGS} == ORIGINAL_DEFAULTS
    assert list(inspect.signature(track.user).parameters) == [
        "user_id", "country_code", "phone_number", "traits", "created_at"]
    assert list(inspect.signature(track.event).parameters) == [
        "user_id", "event", "traits", "country_code", "phone_number", "created_at"]
    assert inspect.signature(track.user).parameters["country_code"].default == "+91"
    assert inspect.signature(track.event).parameters["country_code"].default == "+91"


def test_positional_calls_as_with_the_original(
    fresh_track: Any, server: MockInteraktServer
) -> None:
    track.user("u-9", "+91", "9999999999", {"name": "Ravi"})
    track.event("u-9", "Paid", {"total": 5})
    server.wait_for(2)
    assert server.users("u-9")[0]["traits"] == {"name": "Ravi"}
    assert server.events("Paid")[0]["traits"] == {"total": 5}


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
@pytest.mark.parametrize(("call", "field"), [
    (lambda: track.user(), "user_id"),
    (lambda: track.user(user_id=1.5), "user_id"),
    (lambda: track.user(phone_number="99-99"), "phone_number"),
    (lambda: track.user(phone_number="9999999999", country_code="91"), "country_code"),
    (lambda: track.user(user_id="u", traits=["not", "a", "dict"]), "traits"),
    (lambda: track.user(user_id="u", traits={"obj": object()}), "traits.obj"),
    (lambda: track.user(user_id="u", created_at="yesterday"), "created_at"),
    (lambda: track.event(user_id="u"), "event"),
    (lambda: track.event(user_id="u", event=""), "event"),
    (lambda: track.event(event="Paid"), "user_id"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise_at_the_call(
    fresh_track: Any, server: MockInteraktServer, sync: bool, call: Callable[[], Any], field: str
) -> None:
    track.sync_mode = sync
    with pytest.raises(ValidationError) as info:
        call()
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert server.requests == []


def test_a_missing_key_is_named_at_the_first_call(
    fresh_track: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INTERAKT_API_KEY")
    with pytest.raises(ValidationError, match="INTERAKT_API_KEY") as info:
        track.event(user_id="u", event="Paid")
    assert info.value.field == "api_key"


def test_sync_mode_returns_the_answer_and_raises_refusals(
    fresh_track: Any, server: MockInteraktServer
) -> None:
    track.sync_mode = True
    track.max_retries = 0
    assert track.user(user_id="u-1") == {"result": True, "message": "Accepted"}
    assert len(server.requests) == 1  # sent before the call returned
    server.script(400, 500)
    for status in (400, 500):
        with pytest.raises(APIError) as info:
            track.event(user_id="u-1", event="Paid")
        assert info.value.status_code == status
    assert track.flush()
    track.join()


def test_a_call_after_the_client_closed_is_sent_as_a_record_would_be(
    fresh_track: Any, server: MockInteraktServer
) -> None:
    """track goes through the handler's one door: after a close it reopens, as it does for a
    log record (a dictConfig closing the handler the app shares with track, say)."""
    errors: list[tuple[Exception, Any]] = []
    track.on_error = lambda error, message: errors.append((error, message))
    track.user(user_id="u-1")
    assert track.default_client is not None
    track.default_client.close(timeout=5)
    ok, queued = track.event(user_id="u-1", event="Paid", traits={"a": 1})
    assert ok is True
    assert queued["body"] == {"event": "Paid", "traits": {"a": 1}, "userId": "u-1"}
    assert track.flush(10)
    assert [r.body["event"] for r in server.delivered if r.path.endswith("events/")] == ["Paid"]
    assert errors == []


def test_a_full_queue_returns_false(fresh_track: Any, server: MockInteraktServer) -> None:
    """A server that never answers fills the workers, the backlog and then the queue (1 slot):
    from there on calls return ``(False, message)`` at once and on_error hears of each."""
    server.hang = True
    errors: list[Exception] = []
    # the handler a first call would build from the module's settings, with a short exit bound:
    # the requests it leaves hanging would hold the fixture's shutdown for 5 s
    track.default_client = InteraktHandler(
        host=server.url, max_queue_size=1, shutdown_timeout=0.2,
        on_error=lambda error, message: errors.append(error),
    )
    for _ in range(10_000):
        ok, queued = track.event(user_id="u-1", event="Paid")
        if not ok:
            break
    assert ok is False
    assert queued["path"] == "/v1/public/track/events/"
    assert isinstance(errors[-1], QueueFullError)
    assert track.default_client is not None
    track.default_client.close(timeout=0.1)  # the hung requests end when the server stops


def test_shutdown_then_a_new_client_from_the_current_settings(
    fresh_track: Any, server: MockInteraktServer
) -> None:
    track.event(user_id="u-1", event="First")
    first = track.default_client
    track.shutdown()
    assert track.default_client is None
    assert server.events("First")  # shutdown delivered it
    with MockInteraktServer() as second:
        track.host = second.url
        ok, _ = track.event(user_id="u-1", event="Second")
        assert ok
        assert track.default_client is not first
        track.shutdown()
        assert [b["event"] for b in second.events()] == ["Second"]
    assert track.flush()  # no client: nothing to wait for
    track.join()  # likewise


def test_calls_share_one_pipeline(fresh_track: Any, server: MockInteraktServer) -> None:
    """One handler, one queue, one sender: the track calls and records logged through
    ``track.default_client`` are counted (and sent) by the same pipeline."""
    track.user(user_id="u-1")
    handler = track.default_client
    assert isinstance(handler, InteraktHandler)
    log = logging.getLogger("test.track.shared")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("Paid", extra={"interakt_event": {"user_id": "u-1"}})
    finally:
        log.removeHandler(handler)
    track.event(user_id="u-1", event="Refunded")
    assert track.flush(10)
    assert handler.stats()["sent"] == 3
    assert track.default_client is handler


def test_an_assigned_handler_serves_the_calls(
    fresh_track: Any, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """``track.default_client = handler`` puts legacy track calls on the handler the logging
    configuration already built: one pipeline for the whole app."""
    handler = make_handler()
    track.default_client = handler
    track.event(user_id="u-1", event="Paid")
    assert handler.flush(10)
    assert handler.stats()["sent"] == 1
    assert server.events("Paid")


def test_traits_are_copied_at_the_call(fresh_track: Any, server: MockInteraktServer) -> None:
    traits: dict[str, Any] = {"items": ["a"]}
    track.event(user_id="u-1", event="Paid", traits=traits)
    traits["items"].append("b")
    traits["late"] = True
    server.wait_for(1)
    assert server.events("Paid")[0]["traits"] == {"items": ["a"]}


def test_created_at_is_sent(fresh_track: Any, server: MockInteraktServer) -> None:
    when = dt.datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=dt.timezone.utc)
    track.user(user_id="u-1", created_at=when)
    (request,) = server.wait_for(1)
    assert request.body["createdAt"] == "2026-05-06T07:08:09.123Z"


def test_a_signal_handler_calling_track_while_the_client_is_built_does_not_deadlock(
    fresh_track: Any, server: MockInteraktServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the default client's lock was not re-entrant. A signal handler calling
    track, run while this thread was building the default client (holding the lock), waited
    for it for good. Held here as the interrupted first call would (a fresh lock of the same
    kind, so that a failure leaves the module's free for the teardown)."""
    kind = "RLock" in type(track._client_lock).__name__
    monkeypatch.setattr(track, "_client_lock", threading.RLock() if kind else threading.Lock())
    assert completes_holding(
        track._client_lock, lambda: track.event(user_id="u-1", event="Paid")
    ), "track blocked on a lock its own thread held"
    assert track.flush(10)
    assert [r.body["event"] for r in server.delivered] == ["Paid"]
