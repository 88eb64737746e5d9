"""A record attribute that looks like a tag but is not one sends nothing: say so, once per
distinct name, on the interakt_logging logger; records without extras are not looked at."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interakt_logging import InteraktHandler, _misspelt
from interakt_logging.testing import MockInteraktServer


@pytest.fixture(autouse=True)
def _forget_judged_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_misspelt, "_judged", set(_misspelt._judged))


@pytest.mark.parametrize(("name", "meant"), [
    ("interakt_events", "interakt_event"),
    ("Interakt_event", "interakt_event"),
    ("interakt_users", "interakt_user"),
    ("interact_event", "interakt_event"),
    ("interakt-user", "interakt_user"),
    ("interakt_event_tag", "interakt_event"),
])
def test_a_near_miss_warns_once_naming_the_tag(
    name: str, meant: str, logger: logging.Logger, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    handler = make_handler()
    logger.addHandler(handler)
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        for _ in range(3):
            logger.info("Order Placed", extra={name: {"user_id": "1"}})
    warnings = [r.getMessage() for r in caplog.records if r.name == "interakt_logging"]
    assert len(warnings) == 1, warnings
    assert repr(name) in warnings[0] and repr(meant) in warnings[0]
    assert handler.flush(5) and server.requests == []


@pytest.mark.parametrize("extra", [
    {"request_id": "r1"}, {"user": "42"}, {"event": "x"}, {"interval": 3}, {"internal": True},
])
def test_other_extras_are_not_warned_about(
    extra: dict[str, object], logger: logging.Logger,
    make_handler: Callable[..., InteraktHandler], caplog: pytest.LogCaptureFixture,
) -> None:
    logger.addHandler(make_handler())
    with caplog.at_level(logging.WARNING, logger="interakt_logging"):
        logger.info("hello", extra=extra)
    assert [r for r in caplog.records if r.name == "interakt_logging"] == []


def test_odd_attributes_do_not_break_the_log_call(
    make_handler: Callable[..., InteraktHandler]
) -> None:
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "hello", (), None)
    record.__dict__[7] = "a non-str key"
    record.__dict__["interakt_evnt"] = object()
    assert make_handler().handle(record) is False


def test_a_record_without_extras_is_not_looked_at(
    make_handler: Callable[..., InteraktHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    looked: list[object] = []
    monkeypatch.setattr(_misspelt, "_judge", looked.append)
    handler = make_handler()
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "hello", (), None)
    handler.handle(record)
    logging.Formatter("%(asctime)s %(message)s").format(record)  # what a handler before ours adds
    handler.handle(record)
    assert looked == []


@given(names=st.lists(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.binary(max_size=8)),
                      max_size=6))
def test_any_extra_attributes_never_break_the_log_call(names: list[object]) -> None:
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "hello", (), None)
    for name in names:
        record.__dict__[name] = "value"  # type: ignore[index]
    _misspelt.check_extras(record.__dict__)  # warns or not; never raises


@given(tag=st.sampled_from(["interakt_user", "interakt_event"]), data=st.data())
def test_one_or_two_typos_of_a_tag_are_caught(tag: str, data: st.DataObject) -> None:
    chars = list(tag)
    for _ in range(data.draw(st.integers(1, 2))):
        i = data.draw(st.integers(0, len(chars) - 1))
        edit = data.draw(st.sampled_from(["drop", "double", "swap-case", "replace"]))
        if edit == "drop":
            del chars[i]
        elif edit == "double":
            chars.insert(i, chars[i])
        elif edit == "swap-case":
            chars[i] = chars[i].swapcase()
        else:
            chars[i] = data.draw(st.sampled_from("abcxyz_"))
    name = "".join(chars)
    if name != tag:
        assert _misspelt.near_miss(name) in ("interakt_user", "interakt_event")


def test_a_signal_handler_logging_while_a_name_is_judged_does_not_deadlock() -> None:
    """Regression: the judged-names lock was not re-entrant. A signal handler that logs with
    a new extra, run while this thread was inside ``_judge`` holding it, waited for it for
    good: the log call blocked and the process hung. Held here as that interrupted call would."""
    finished = threading.Event()

    def interrupted_judge() -> None:
        with _misspelt._judged_lock:  # the interrupted _judge holds it
            _misspelt.check_extras({**_misspelt._PLAIN, "interakt_evnt": 1})
        finished.set()

    thread = threading.Thread(target=interrupted_judge, daemon=True)
    thread.start()
    thread.join(5)
    assert finished.is_set(), "check_extras blocked on a lock its own thread held"
