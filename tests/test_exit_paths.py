"""SIGTERM with its default action skips atexit: the handler's own SIGTERM handler drains first,
and the process still dies of the signal. It never takes a handler the app set, acts only in
the main thread, and INTERAKT_EXIT_HOOKS=0 turns it off. Each case in a real subprocess."""

from __future__ import annotations

import signal

import pytest

from interakt_logging.testing import MockInteraktServer

from .conftest import run_python

pytestmark = pytest.mark.slow

SIGTERM_ACTION = """
import logging, signal, threading
from interakt_logging import InteraktHandler, _exit_paths
{before}
def action():
    current = signal.getsignal(signal.SIGTERM)
    if current is signal.SIG_DFL:
        return "default"
    return "ours" if current is _exit_paths.drain_then_die else "the app's"
{build}
print(action())
"""


@pytest.mark.parametrize(("before", "build", "env", "expected"), [
    ("", "InteraktHandler()", {}, "ours"),
    ("", "InteraktHandler()", {"INTERAKT_EXIT_HOOKS": "0"}, "default"),
    ("", "t = threading.Thread(target=InteraktHandler); t.start(); t.join()", {}, "default"),
    ("signal.signal(signal.SIGTERM, lambda *a: None)", "InteraktHandler()", {}, "the app's"),
], ids=["default-action", "opted-out", "not-main-thread", "app-handler"])
def test_what_is_installed_for_sigterm(
    before: str, build: str, env: dict[str, str], expected: str, server: MockInteraktServer
) -> None:
    done = run_python(SIGTERM_ACTION.format(before=before, build=build),
                      env={"INTERAKT_HOST": server.url, **env})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


KILLED = """
import logging, os, signal
from interakt_logging import InteraktHandler
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(InteraktHandler(shutdown_timeout=1, on_error=lambda error, payload: print(
    "reported", payload["body"]["userId"], type(error).__name__, flush=True)))
for i in range(50):
    log.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})
os.kill(os.getpid(), signal.SIGTERM)
print("still alive", flush=True)
"""


@pytest.mark.parametrize("api", ["answers", "hangs"])
def test_a_process_killed_by_sigterm_delivers_or_reports_then_dies_of_it(
    api: str, server: MockInteraktServer
) -> None:
    server.latency = 0.05
    server.hang = api == "hangs"
    done = run_python(KILLED, env={"INTERAKT_HOST": server.url})
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "still alive" not in done.stdout
    delivered = {r.body["userId"] for r in server.delivered}
    reported = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("reported")}
    assert delivered | reported == set(map(str, range(50))) and not delivered & reported
    if api == "answers":
        assert delivered == set(map(str, range(50)))
    else:
        assert "DeliveryError" in done.stdout


SIGTERM_WHILE_HELD = """
class SigtermWhileHeld:
    '''The workers' lock, sending SIGTERM to this process once the main thread holds it: the
    handler runs right there, as when Pool.terminate() hits a worker closing its pipeline.'''
    def __init__(self, lock):
        self.lock, self.sent = lock, False
    def __enter__(self):
        self.lock.__enter__()
        if not self.sent and threading.current_thread() is threading.main_thread():
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return self
    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)
"""

SIGTERM_INSIDE_CLOSE = """
import logging, os, signal, threading
from interakt_logging import InteraktHandler
handler = InteraktHandler(shutdown_timeout=2, on_error=lambda error, payload: print(
    "reported", payload["body"]["userId"], type(error).__name__, flush=True))
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(50):
    log.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})

""" + SIGTERM_WHILE_HELD + """
handler.pipeline.workers._lock = SigtermWhileHeld(handler.pipeline.workers._lock)
handler.close()
print("still alive", flush=True)
"""


def test_sigterm_while_the_main_thread_closes_finishes_the_close_then_dies(
    server: MockInteraktServer,
) -> None:
    """Regression: a SIGTERM arriving while the main thread was inside close() (holding the
    workers' lock) drained again from the signal handler and deadlocked on that lock for good:
    a `with Pool()` block's terminate() hung on its worker. Now the close under way finishes and
    the process then dies of the signal, everything delivered."""
    server.latency = 0.02
    done = run_python(SIGTERM_INSIDE_CLOSE, env={"INTERAKT_HOST": server.url}, timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "still alive" not in done.stdout
    assert {r.body["userId"] for r in server.delivered} == set(map(str, range(50)))
    assert "reported" not in done.stdout


SIGTERM_INSIDE_ONE_CLOSE_OF_TWO = """
import logging, os, signal, threading
from interakt_logging import InteraktHandler
def report(error, payload):
    print("reported", payload["body"]["userId"], type(error).__name__, flush=True)
closing = InteraktHandler(shutdown_timeout=2, on_error=report)
other = InteraktHandler(shutdown_timeout=2, workers=1, on_error=report)
for name, handler in (("closing", closing), ("other", other)):
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for i in range(10):
        log.info("Order Placed", extra={"interakt_event": {"user_id": f"{name}-{i}"}})

""" + SIGTERM_WHILE_HELD + """
closing.pipeline.workers._lock = SigtermWhileHeld(closing.pipeline.workers._lock)
closing.close()
print("still alive", flush=True)
"""


def test_sigterm_deferred_during_one_close_drains_the_other_handlers_before_dying(
    server: MockInteraktServer,
) -> None:
    """Regression: a SIGTERM deferred while the main thread closed one handler died of the
    signal as soon as that close ended, so another handler's queued payloads (its sender one
    slow request at a time) were neither delivered nor reported. Now the deferred signal does
    what it would have done: drain every handler, then die."""
    server.latency = 0.1
    done = run_python(SIGTERM_INSIDE_ONE_CLOSE_OF_TWO, env={"INTERAKT_HOST": server.url},
                      timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "still alive" not in done.stdout
    delivered = {r.body["userId"] for r in server.delivered}
    reported = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("reported")}
    expected = {f"{name}-{i}" for name in ("closing", "other") for i in range(10)}
    assert delivered | reported == expected, sorted(expected - delivered - reported)
    assert not delivered & reported
