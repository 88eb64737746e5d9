"""Exits and forks, in real subprocesses: queued events leave without flush() or close()."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from interakt_logging.testing import MockInteraktServer

from .conftest import API_KEY

pytestmark = pytest.mark.slow  # exits, forks and signals in real processes


def _interpreters() -> list[str]:
    """This interpreter, plus any listed in INTERAKT_TEST_PYTHONS (os.pathsep-separated), e.g.
    3.12+ venvs with the package installed: their atexit hooks may not start threads."""
    extra = [p for p in os.environ.get("INTERAKT_TEST_PYTHONS", "").split(os.pathsep) if p]
    return [sys.executable, *[p for p in extra if shutil.which(p) or os.path.exists(p)]]


@pytest.fixture(params=_interpreters(), ids=lambda p: os.path.basename(os.path.dirname(os.path.dirname(p))) or p)
def python(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def slow_server() -> Iterator[MockInteraktServer]:
    with MockInteraktServer(latency=0.02) as srv:
        yield srv


PRELUDE = """
import logging, os, sys
from interakt_logging import InteraktHandler
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
def event(uid):
    return {"interakt_event": {"user_id": uid, "traits": {"orderNumber": "CUS001"}}}
"""


def run(python: str, code: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "INTERAKT_API_KEY": API_KEY, **env}
    return subprocess.run([python, "-c", PRELUDE + textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_script_that_just_ends_delivers_what_it_queued(
    python: str, slow_server: MockInteraktServer
) -> None:
    started = time.monotonic()
    done = run(python, f"""
        log.addHandler(InteraktHandler(host={slow_server.url!r}))
        for i in range(200):
            log.info("Order Placed", extra=event(str(i)))
        print("last call at", flush=True)
    """)
    assert done.returncode == 0, done.stderr
    assert sorted(r.body["userId"] for r in slow_server.delivered) == sorted(map(str, range(200)))
    assert time.monotonic() - started < 30


def test_exit_is_bounded_when_the_api_never_answers(python: str, server: MockInteraktServer) -> None:
    server.hang = True
    done = run(python, f"""
        def on_error(error, payload):
            print("failed", payload["body"]["userId"], type(error).__name__, flush=True)
        log.addHandler(InteraktHandler(host={server.url!r}, shutdown_timeout=1, on_error=on_error))
        for i in range(30):
            log.info("Order Placed", extra=event(str(i)))
    """, timeout=30)
    assert done.returncode == 0, done.stderr
    reported = sorted(line.split()[1] for line in done.stdout.splitlines())
    assert reported == sorted(map(str, range(30)))
    assert "DeliveryError" in done.stdout
    assert "30 payload(s) undelivered" in done.stderr


def test_forked_children_deliver_without_flush(python: str, server: MockInteraktServer) -> None:
    """The parent has sent (threads running) before forking; each child logs and simply exits."""
    done = run(python, f"""
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        handler = InteraktHandler(host={server.url!r})
        log.addHandler(handler)
        log.info("Order Placed", extra=event("parent-before"))
        assert handler.flush(10)
        children = []
        for child in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(50):
                    log.info("Order Placed", extra=event(f"child{{child}}-{{i}}"))
                sys.exit(0)
            children.append(pid)
        log.info("Order Placed", extra=event("parent-after"))
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        print("children", codes)
    """)
    assert done.returncode == 0, done.stderr
    assert "children [0, 0, 0]" in done.stdout
    ids = [r.body["userId"] for r in server.delivered]
    assert len(ids) == len(set(ids)) == 152
    assert {"parent-before", "parent-after"} <= set(ids)


def test_a_long_lived_forked_worker_delivers_in_the_background(server: MockInteraktServer) -> None:
    """Like a gunicorn or Celery prefork worker: it keeps running, never flushes, never exits
    until told to, and its events arrive meanwhile."""
    script = PRELUDE + textwrap.dedent(f"""
        import multiprocessing
        log.addHandler(InteraktHandler(host={server.url!r}))
        log.info("Order Placed", extra=event("master"))
        def worker(stop):
            for i in range(50):
                log.info("Order Placed", extra=event(f"worker-{{i}}"))
            stop.wait(60)
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()
        proc = ctx.Process(target=worker, args=(stop,))
        proc.start()
        print("started", flush=True)
        sys.stdin.readline()
        stop.set()
        proc.join(30)
        print("exitcode", proc.exitcode, flush=True)
    """)
    env = {**os.environ, "INTERAKT_API_KEY": API_KEY}
    with subprocess.Popen([sys.executable, "-W", "ignore::DeprecationWarning", "-c", script],
                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "started"
            server.wait_for(51, timeout=30)  # while the worker is alive, blocked in stop.wait
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "exitcode 0"
        finally:
            proc.kill()
    ids = [r.body["userId"] for r in server.delivered]
    assert len(ids) == len(set(ids)) == 51


def test_multiprocessing_fork_children_deliver_when_their_target_returns(
    python: str, server: MockInteraktServer
) -> None:
    """A fork-started multiprocessing child ends with os._exit(), skipping atexit: the drain
    runs from multiprocessing's finalizers instead."""
    done = run(python, f"""
        import multiprocessing, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        log.addHandler(InteraktHandler(host={server.url!r}))
        log.info("Order Placed", extra=event("parent"))
        def work(n):
            for i in range(25):
                log.info("Order Placed", extra=event(f"child{{n}}-{{i}}"))
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            procs = [ctx.Process(target=work, args=(n,)) for n in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(30)
            print("exitcodes", [p.exitcode for p in procs])
    """)
    assert done.returncode == 0, done.stderr
    assert "exitcodes [0, 0]" in done.stdout
    ids = [r.body["userId"] for r in server.delivered]
    assert len(ids) == len(set(ids)) == 51


@pytest.mark.parametrize("outbox", [False, True], ids=["no-outbox", "outbox"])
def test_an_event_logged_from_an_atexit_hook_is_not_lost(
    python: str, server: MockInteraktServer, tmp_path: Any, outbox: bool
) -> None:
    """The app's own atexit hook logs the first event, while Python 3.12+ refuses new threads:
    it is sent on the calling thread, or written to the outbox for the next process."""
    setting = f"outbox={str(tmp_path / 'outbox.sqlite3')!r}" if outbox else ""
    done = run(python, f"""
        import atexit
        log.addHandler(InteraktHandler(host={server.url!r}, {setting}))
        atexit.register(lambda: log.info("Order Placed", extra=event("at-exit")))
    """)
    assert done.returncode == 0, done.stderr
    if outbox:  # a later process with the same outbox delivers whatever was left there
        later = run(python, f"""
            handler = InteraktHandler(host={server.url!r}, {setting})
            handler.flush(10)
        """)
        assert later.returncode == 0, later.stderr
    server.wait_for(1, timeout=20)
    assert [r.body["userId"] for r in server.delivered] == ["at-exit"]
