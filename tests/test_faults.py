"""Faults, dying threads and re-entry: no part that fails, no thread that ends, no signal
handler or on_error that logs stops delivery, raises into the app or loses a payload.

Faults are injected by wrapping the parts of a built pipeline (tests only): every third call
on each thread raises, so a part that is called again on the same thread succeeds then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from interakt_logging import InteraktHandler

from .conftest import run_python


@pytest.fixture
def library_log() -> Iterator[list[logging.LogRecord]]:
    """What the library logs about itself."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    log = logging.getLogger("interakt_logging")
    log.addHandler(keep)
    yield records
    log.removeHandler(keep)
    for f in list(log.filters):
        log.removeFilter(f)


# -- re-entry on the calling thread: signal handlers and on_error ---------------------------

_SIGNAL_INSIDE_THE_REPORTER = """
import logging, os, signal, sys
from interakt_logging import InteraktHandler

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
errors = []
handler = InteraktHandler(api_key="k", host="http://127.0.0.1:9", on_error=lambda e, p: errors.append(e))
log.addHandler(handler)

def on_alarm(signum, frame):
    log.info("Signal", extra={"interakt_event": {"user_id": "sig", "phone_number": "bad-1"}})

signal.signal(signal.SIGALRM, on_alarm)

class Interrupting(dict):
    # the reporter's table, read inside its lock: the signal arrives right there
    fired = False

    def get(self, key, default=None):
        if not Interrupting.fired:
            Interrupting.fired = True
            os.kill(os.getpid(), signal.SIGALRM)
        return super().get(key, default)

handler.pipeline.reporter._problems = Interrupting()
log.info("Order", extra={"interakt_event": {"user_id": "1", "phone_number": "bad-2"}})
assert Interrupting.fired
print(len(errors), handler.stats()["failed"])
handler.close()
"""


@pytest.mark.slow
def test_a_signal_handler_that_logs_inside_a_report_does_not_deadlock() -> None:
    """Issue 9 item 5: SIGALRM arrives while the reporter holds its lock (sent from inside
    it), and its handler logs an event that is refused too. It used to deadlock (4/4 runs)."""
    done = run_python(_SIGNAL_INSIDE_THE_REPORTER, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "2"]  # both refusals reported and counted


_SIGNAL_WHILE_THE_SENDER_STARTS = """
import logging, os, signal
from interakt_logging import InteraktHandler
from interakt_logging.testing import MockInteraktServer

server = MockInteraktServer()
server.start()
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
handler = InteraktHandler(api_key="k", host=server.url)
log.addHandler(handler)

def on_alarm(signum, frame):
    log.info("Signal", extra={"interakt_event": {"user_id": "sig"}})

signal.signal(signal.SIGALRM, on_alarm)
start = handler.pipeline.listener.start

def interrupted_start():
    # the first log call starts the threads, holding the pipeline's lock: the signal arrives
    os.kill(os.getpid(), signal.SIGALRM)
    start()

handler.pipeline.listener.start = interrupted_start
log.info("Order", extra={"interakt_event": {"user_id": "first"}})
print(bool(handler.flush(10)), *sorted(body["userId"] for body in server.events()))
handler.close()
server.stop()
"""


@pytest.mark.slow
def test_a_signal_handler_that_logs_while_the_first_call_starts_the_sender() -> None:
    """The first tagged call starts the threads under the pipeline's lock; a signal handler
    that logs right then used to wait for that lock on the same thread, for ever. Now its
    event is queued, and the interrupted start completes and delivers both."""
    done = run_python(_SIGNAL_WHILE_THE_SENDER_STARTS, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "first", "sig"]


_ON_ERROR_LOGS_TO_ITS_CLOSED_HANDLER = """
import atexit, logging
# registered before the library's exit drain, so it runs after it (last in, first out)
atexit.register(lambda: print(len(calls), handler.stats()["failed"]))
from interakt_logging import InteraktHandler

log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
calls = []

def on_error(error, payload):
    calls.append(payload)
    log.info("Delivery Failed", extra={"interakt_event": {"user_id": "ops"}})

handler = InteraktHandler(
    api_key="k", host="http://127.0.0.1:9", on_error=on_error, shutdown_timeout=0.2,
    max_retries=100,
)
log.addHandler(handler)
for i in range(5):
    log.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})
"""


@pytest.mark.slow
def test_on_error_that_logs_to_its_closed_handler_at_exit_does_not_recurse() -> None:
    """Issue 9: 5 payloads lost at exit, on_error logging a tagged event to the same (closed)
    handler, gave 20 RecursionErrors and 10,506 lines of stderr. Now on_error hears of the 5;
    the 5 events it logged are counted and warned about once, without calling it again."""
    done = run_python(_ON_ERROR_LOGS_TO_ITS_CLOSED_HANDLER, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "RecursionError" not in done.stderr
    assert len(done.stderr.splitlines()) <= 6, done.stderr
    assert done.stdout.split() == ["5", "10"]


def test_a_report_made_inside_on_error_reaches_the_counters_but_not_on_error_again(
    library_log: list[logging.LogRecord],
) -> None:
    calls: list[Any] = []

    def on_error(error: Exception, payload: Any) -> None:
        calls.append(payload)
        handler.submit("event", {"user_id": "x", "phone_number": "bad"}, created=0.0)

    handler = InteraktHandler(api_key="k", host="http://127.0.0.1:9", on_error=on_error)
    try:
        handler.submit("event", {"user_id": "y", "phone_number": "bad"}, created=0.0)
        assert [c["user_id"] for c in calls] == ["y"]
        assert handler.stats()["failed"] == 2
        assert [r for r in library_log if "while on_error was running" in r.getMessage()]
    finally:
        handler.close()


# -- a handler whose construction failed ------------------------------------------------------

_HALF_BUILT = """
import logging, logging.config

try:
    logging.config.dictConfig({
        "version": 1,
        "handlers": {"i": {"class": "interakt_logging.InteraktHandler", "api_key": "k", "workers": 0}},
        "root": {"handlers": ["i"]},
    })
except ValueError as exc:
    kept = exc  # as Django keeps it: the traceback holds the half-built handler
    print("configuration refused")

handler = next(h for h in logging._handlerList if type(h()).__name__ == "InteraktHandler")()
handler.handle(logging.makeLogRecord({"msg": "x", "interakt_event": {"user_id": "1"}}))
print("flush", bool(handler.flush()))
print(repr(handler))
"""


@pytest.mark.slow
def test_a_handler_whose_construction_failed_is_harmless_at_exit() -> None:
    """Issue 9: after dictConfig's "Unable to configure handler", logging.shutdown flushed and
    closed the half-built handler at exit: AttributeError ... no attribute 'pipeline'."""
    done = run_python(_HALF_BUILT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "configuration refused", "flush True", "<InteraktHandler (construction failed)>",
    ]
    # handle() reports through logging's handleError, like any broken handler; nothing at exit
    assert done.stderr.count("Traceback") == 1 and "Logging error" in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
