"""Every front door reports a failure the same way (issue 12, item 1).

A log record, the structlog processor, ``track`` (background and sync mode) and the command line
all go through ``InteraktHandler``: records through ``emit``, the others through ``submit``. The
same refusal (the API answers 400) and the same bad input (a phone number with a dash) must
therefore end the same way from each: counted as failed in ``stats()``, passed once to
``on_error``, warned about once on the ``interakt_logging`` logger. What differs is only what
the caller sees: a log call and the processor never raise; ``track`` raises ValidationError at
the call, and in sync mode APIError; the command line exits 2 or 1.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
from hypothesis import given

from interakt_logging import (
    EVENTS_PATH,
    USERS_PATH,
    APIError,
    InteraktHandler,
    InteraktProcessor,
    Submitted,
    ValidationError,
    track,
)
from interakt_logging._cli import main as cli_main
from interakt_logging._payload import payload_from_tag
from interakt_logging.testing import MockInteraktServer, Reply, capture

from .test_properties import hostile, json_like, tags

REFUSAL = Reply(400, body={"result": False, "message": "Invalid phone number"})
GOOD = {"user_id": "u-1", "traits": {"orderNumber": "CUS001"}}
BAD = {"user_id": "u-1", "phone_number": "99-99"}  # refused before anything is sent

Reports = List[Tuple[Exception, Any]]


class Door:
    """One front door onto ``handler``: ``call(tag)`` makes an "Order Placed" event call with
    ``tag`` and returns what the caller got (or raises what the caller would see)."""

    def __init__(self, name: str, call: Callable[[InteraktHandler, dict[str, Any]], Any]) -> None:
        self.name = name
        self.call = call

    def __repr__(self) -> str:
        return self.name


def _log_record(handler: InteraktHandler, tag: dict[str, Any]) -> Any:
    log = logging.getLogger("test.doors")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("Order Placed", extra={"interakt_event": tag})
    finally:
        log.removeHandler(handler)


def _processor(handler: InteraktHandler, tag: dict[str, Any]) -> Any:
    return InteraktProcessor(handler)(None, "info", {"event": "Order Placed", "interakt_event": tag})


def _track(handler: InteraktHandler, tag: dict[str, Any]) -> Any:
    track.default_client = handler
    try:
        return track.event(event="Order Placed", **tag)
    finally:
        track.default_client = None


DOORS = [Door("log-record", _log_record), Door("processor", _processor), Door("track", _track)]


@pytest.fixture
def library_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], List[str]]]:
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        yield lambda: [r.getMessage() for r in caplog.records
                       if r.name == "interakt_logging" and r.levelno == logging.WARNING]


class Outcome:
    """One call through a door onto a handler that records what it reports: ``raised`` is what
    the caller saw raised, ``reports`` what on_error got, ``logging_errors`` the records
    logging's error hook (``handleError``) got."""

    def __init__(self, door: Door, make_handler: Callable[..., InteraktHandler], sync: bool,
                 tag: dict[str, Any]) -> None:
        self.reports: Reports = []
        self.handler = make_handler(sync_mode=sync, max_retries=0, on_error=lambda error,
                                    payload: self.reports.append((error, payload)))
        self.logging_errors: List[logging.LogRecord] = []
        self.handler.handleError = self.logging_errors.append  # type: ignore[method-assign]
        self.raised: Optional[Exception] = None
        try:
            door.call(self.handler, tag)
        except (APIError, ValidationError) as exc:
            self.raised = exc
        self.handler.flush(10)


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
@pytest.mark.parametrize("door", DOORS, ids=repr)
def test_a_refusal_is_reported_the_same_from_every_door(
    door: Door, sync: bool, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], library_warnings: Callable[[], List[str]],
) -> None:
    server.script(REFUSAL)
    outcome = Outcome(door, make_handler, sync, GOOD)

    (error, message), = outcome.reports
    assert isinstance(error, APIError) and error.status_code == 400
    assert message["path"] == EVENTS_PATH
    assert message["body"]["event"] == "Order Placed" and message["body"]["userId"] == "u-1"
    assert outcome.handler.stats()["failed"] == 1 and outcome.handler.stats()["sent"] == 0
    assert [w for w in library_warnings() if "400" in w] != []
    assert len(server.requests) == 1  # a 400 is never retried
    # what the caller sees: only track in sync mode raises (the original SDK's behaviour)
    assert outcome.raised is (error if door.name == "track" and sync else None)
    # reported once: never also through logging's error hook ("--- Logging error ---")
    assert outcome.logging_errors == []


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
@pytest.mark.parametrize("door", DOORS, ids=repr)
def test_bad_input_is_reported_the_same_from_every_door(
    door: Door, sync: bool, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], library_warnings: Callable[[], List[str]],
) -> None:
    outcome = Outcome(door, make_handler, sync, BAD)

    (error, tag), = outcome.reports
    assert isinstance(error, ValidationError) and error.field == "phone_number"
    assert tag["phone_number"] == "99-99"  # on_error gets the tag (or call) as given
    assert outcome.handler.stats()["failed"] == 1
    assert [w for w in library_warnings() if "phone_number" in w] != []
    assert server.requests == []
    # track raises it at the call, in both modes; a log call and the processor never raise
    assert outcome.raised is (error if door.name == "track" else None)
    assert outcome.logging_errors == []


# -- the command line: the same handler door, its own way of telling -------------------------------


@pytest.mark.parametrize(("args", "status", "says"), [
    (["--user-id", "u-1"], 1, "refused: HTTP 400: Invalid phone number"),
    (["--user-id", "u-1", "--phone", "99-99"], 2, "(option --phone)"),
], ids=["refused", "bad-input"])
def test_the_command_line_reports_through_the_handler(
    server: MockInteraktServer, capsys: pytest.CaptureFixture[str],
    library_warnings: Callable[[], List[str]], args: List[str], status: int, says: str,
) -> None:
    """send-event goes through ``submit`` (sync mode): the handler's report is made (its warning
    is on the library logger), and the command says it once on stderr, in its own words."""
    server.script(REFUSAL)
    assert cli_main(["send-event", "Order Placed", *args, "--host", server.url,
                     "--max-retries", "0"]) == status
    err = capsys.readouterr().err
    assert says in err
    assert len(library_warnings()) == 1  # reported by the handler, as from every door
    assert "repeats are summarised" not in err  # ... and not printed a second time
    assert len(server.requests) == (1 if status == 1 else 0)


def test_the_command_line_shows_the_refused_request(
    server: MockInteraktServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.script(REFUSAL)
    assert cli_main(["send-user", "--user-id", "u-1", "--host", server.url]) == 1
    out = capsys.readouterr().out
    assert f"POST {server.url}{USERS_PATH}" in out and '"userId": "u-1"' in out


# -- the one door: submit ---------------------------------------------------------------------------


def test_submit_returns_what_became_of_the_call(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    background = make_handler()
    queued = background.submit(EVENTS_PATH, dict(GOOD), default_event="Order Placed",
                               created=1_767_000_000.0)
    assert isinstance(queued, Submitted)
    assert (queued.path, queued.created, queued.accepted, queued.answer) == (
        EVENTS_PATH, 1_767_000_000.0, True, None)
    assert queued.body.startswith(b'{"event":"Order Placed"')
    assert background.flush(10)
    sync = make_handler(sync_mode=True)
    answered = sync.submit(USERS_PATH, {"user_id": "u-2"})
    assert answered.accepted and answered.answer == {"result": True, "message": "Accepted"}
    assert len(server.delivered) == 2


@pytest.mark.parametrize("sync", [False, True], ids=["background", "sync"])
def test_submit_without_a_key_refuses_as_a_log_call_does(
    sync: bool, monkeypatch: pytest.MonkeyPatch, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    """No key: reported (the ValidationError for api_key) and not raised, as for a log record
    in an app started without its key; ``accepted`` says it was not taken."""
    monkeypatch.delenv("INTERAKT_API_KEY")
    reports: Reports = []
    handler = make_handler(sync_mode=sync,
                           on_error=lambda error, payload: reports.append((error, payload)))
    submitted = handler.submit(EVENTS_PATH, dict(GOOD), default_event="Order Placed")
    assert (submitted.accepted, submitted.answer) == (False, None)
    assert [(type(e), e.field) for e, _ in reports] == [(ValidationError, "api_key")]
    assert handler.stats()["failed"] == 1 and server.requests == []


def test_a_path_equal_to_the_constant_but_built_elsewhere_is_the_constant(
    server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Paths compare with ==: a path read from a config file or built at runtime is an equal
    str, not the same object, and once built an event body without "event"."""
    built = "".join(["/v1/public/track/", "events/"])
    assert built == EVENTS_PATH and built is not EVENTS_PATH
    path, body, _ = payload_from_tag(built, {"user_id": "u-1"}, "Order Placed", 0.0)
    assert path is EVENTS_PATH and body.startswith(b'{"event":"Order Placed"')
    handler = make_handler()
    assert handler.submit(built, {"user_id": "u-1"}, default_event="Order Placed").accepted
    assert handler.flush(10)
    (request,) = server.delivered
    assert request.path == EVENTS_PATH and request.body["event"] == "Order Placed"


@pytest.mark.parametrize("path", ["event", "/v1/public/track/users", None, ["x"]],
                         ids=["a-kind", "no-slash", "None", "a-list"])
def test_a_path_that_is_not_a_track_api_path_is_bad_input(
    path: Any, make_handler: Callable[..., InteraktHandler], server: MockInteraktServer
) -> None:
    reports: Reports = []
    handler = make_handler(on_error=lambda error, payload: reports.append((error, payload)))
    with pytest.raises(ValidationError) as info:
        handler.submit(path, {"user_id": "u-1"})
    assert info.value.field == "path" and "EVENTS_PATH" in info.value.expected
    assert [error for error, _ in reports] == [info.value]
    assert server.requests == []


# -- the same tag, whatever it holds, ends the same way from every door ----------------------------


def _end_of(tag: dict[str, Any], door: str) -> Tuple[str, Any]:
    """How one tag ended through ``door``: ("sent", body without createdAt) or ("refused",
    the field the reported ValidationError names). Checks that nothing else happened."""
    reports: Reports = []
    logging_errors: List[logging.LogRecord] = []
    with capture() as captured:
        handler = InteraktHandler(on_error=lambda error, payload: reports.append((error, payload)))
        handler.handleError = logging_errors.append  # type: ignore[method-assign]
        try:
            if door == "log-record":
                _log_record(handler, tag)
            elif door == "processor":
                assert _processor(handler, tag) == {"event": "Order Placed"}
            else:
                try:
                    handler.submit(EVENTS_PATH, tag, default_event="Order Placed")
                except ValidationError as exc:
                    assert [error for error, _ in reports] == [exc]  # reported, then raised
            assert handler.flush(10)
        finally:
            handler.close()
    assert logging_errors == []
    if captured:
        assert reports == []
        (call,) = captured
        return "sent", {k: v for k, v in call.body.items() if k != "createdAt"}
    (error, _), = reports
    assert isinstance(error, ValidationError)
    return "refused", error.field


@given(tag=tags(json_like) | tags(hostile))
def test_any_tag_ends_the_same_way_from_every_door(tag: dict[str, Any]) -> None:
    ends = {door: _end_of(tag, door) for door in ("log-record", "processor", "submit")}
    assert ends["processor"] == ends["log-record"] and ends["submit"] == ends["log-record"], ends
