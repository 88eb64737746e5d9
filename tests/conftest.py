"""Shared fixtures: a loopback Track API and handlers that are always closed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import pytest

from interakt_logging import InteraktHandler, _lifecycle
from interakt_logging.testing import MockInteraktServer
from interakt_logging.testing import wait_until as wait_until  # one helper, tests and bench

API_KEY = "test-key-5f2b9c"


@pytest.fixture(autouse=True)
def _api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERAKT_API_KEY", API_KEY)


@pytest.fixture(autouse=True)
def _processes_only_in_slow_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pytest -m "not slow"`` stays a fast loop: a test that starts a process (subprocess,
    fork, multiprocessing) fails at once unless it is marked ``@pytest.mark.slow``."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"{request.node.nodeid} starts a process: mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    if hasattr(os, "fork"):
        monkeypatch.setattr(os, "fork", refuse)


@pytest.fixture(autouse=True)
def _no_handler_left_open(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test closes the handlers it opens. One left open with payloads queued is ended by the
    exit drain of pytest's own process, which then prints "closed with N payload(s)
    undelivered" after the summary, blamed on no test. Fail the test that left it, here, and
    close it. (Set up first, so torn down after every other fixture, make_handler's closes
    included; a look at a handful of pipelines per test.)"""
    before = {id(pipeline) for pipeline in list(_lifecycle._pipelines)}
    yield
    left = [pipeline for pipeline in list(_lifecycle._pipelines)
            if id(pipeline) not in before and not getattr(pipeline, "_closed", True)
            and pipeline.pending()]
    if left:
        for pipeline in left:
            pipeline.close(0)
        pytest.fail(f"{request.node.nodeid} left {len(left)} InteraktHandler(s) open with "
                    "payloads queued: close them (make_handler does)")


@pytest.fixture
def server() -> Iterator[MockInteraktServer]:
    with MockInteraktServer() as srv:
        yield srv


@pytest.fixture
def make_handler(server: MockInteraktServer) -> Iterator[Callable[..., InteraktHandler]]:
    """Build InteraktHandlers pointed at ``server`` (unless host= is given); all are closed."""
    made: list[InteraktHandler] = []

    def make(**kwargs: Any) -> InteraktHandler:
        kwargs.setdefault("host", server.url)
        handler = InteraktHandler(**kwargs)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A fresh logger at DEBUG that does not propagate; handlers removed afterwards."""
    log = logging.getLogger(f"test.{request.node.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this one) and return the finished process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def log_from_threads(handler: InteraktHandler, threads: int, per_thread: int) -> list[str]:
    """Log ``per_thread`` tagged events from each of ``threads`` threads at once, through a
    logger that has only ``handler``; returns the user ids logged (all distinct)."""
    log = logging.getLogger(f"test.threads.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)

    def produce(thread: int) -> None:
        for i in range(per_thread):
            log.info("Order Placed", extra={"interakt_event": {"user_id": f"{thread}-{i}"}})

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    log.removeHandler(handler)
    return [f"{t}-{i}" for t in range(threads) for i in range(per_thread)]


def completes_holding(lock: Any, call: Callable[[], Any], timeout: float = 5) -> bool:
    """Run ``call`` on a thread that holds ``lock`` already, as a signal handler runs inside the
    code it interrupted: True when it returned, False when it blocked on that lock (the daemon
    thread is then left behind, stuck)."""
    finished = threading.Event()

    def holding() -> None:
        with lock:
            call()
        finished.set()

    thread = threading.Thread(target=holding, daemon=True)
    thread.start()
    thread.join(timeout)
    return finished.is_set()


class UnreadableMapping(Mapping[str, Any]):
    """A mapping that breaks when read, as a buggy custom Mapping might."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1
