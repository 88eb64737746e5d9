"""Shared fixtures: a loopback Track API and handlers that are always closed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from interakt_logging import InteraktHandler
from interakt_logging.testing import MockInteraktServer

API_KEY = "test-key-5f2b9c"


@pytest.fixture(autouse=True)
def _api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERAKT_API_KEY", API_KEY)


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
