"""Every example runs as documented: by default against its own loopback mock (checked through
the ``received:`` lines it prints), and with INTERAKT_API_KEY set against the host it is given
(checked through what that server recorded). All runs go in parallel subprocesses."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from interakt_logging.testing import MockInteraktServer

pytestmark = pytest.mark.slow  # every example runs in a process

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

# what each example sends: (path kind, event name or the user's id / phone number)
EXPECTED = {
    "plain_logging.py": [("events", "Order Placed"), ("users", "42")],
    "dict_config.py": [("events", "Trial Started"), ("users", "7")],
    "file_config.py": [("events", "Invoice Paid"), ("users", "9876543210")],
    "django_settings.py": [("events", "Order Placed")],
    "wsgi_app.py": [("events", "Page Viewed"), ("events", "Page Viewed")],
    "track_dropin.py": [("events", "Order Placed"), ("users", "u1")],
    "structlog_native.py": [("events", "Order Placed"), ("users", "42")],
    "structlog_stdlib.py": [("events", "Order Placed"), ("users", "43")],
    "queue_handler_312.py": [("events", "Order Placed"), ("users", "42")],
}
NEEDS_STRUCTLOG = {"structlog_native.py", "structlog_stdlib.py"}
NEEDS_312 = {"queue_handler_312.py"}


def _skip_reason(name: str) -> str | None:
    if name in NEEDS_STRUCTLOG and importlib.util.find_spec("structlog") is None:
        return "structlog is not installed"
    if name in NEEDS_312 and sys.version_info < (3, 12):
        return "needs Python 3.12+ (run by test_logging_config on any 3.12+ found)"
    return None


def _summary(path: str, body: dict[str, Any]) -> tuple[str, str]:
    kind = path.rstrip("/").rsplit("/", 1)[1]
    return kind, body.get("event") or body.get("userId") or body["phoneNumber"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runs:
    default: Run  # no key: the example's own mock
    with_key: Run  # key set: our server
    server: MockInteraktServer


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Runs]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INTERAKT_")}
    with contextlib.ExitStack() as stack:
        started = {}
        for name in EXPECTED:
            if _skip_reason(name):
                continue
            server = stack.enter_context(MockInteraktServer())
            started[name] = (server, [
                subprocess.Popen(
                    [sys.executable, str(EXAMPLES / name)], env=env, cwd=EXAMPLES.parent,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
                for env in (base, dict(base, INTERAKT_API_KEY="k-test", INTERAKT_HOST=server.url))
            ])
        results = {}
        for name, (server, procs) in started.items():
            done = []
            for proc in procs:
                try:
                    out, err = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                done.append(Run(proc.returncode, out, err))
            results[name] = Runs(done[0], done[1], server)
        yield results


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_against_its_own_mock(runs: dict[str, Runs], name: str) -> None:
    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)
    run = runs[name].default
    assert run.returncode == 0, run.stderr
    received = [
        json.loads(line.split("received:", 1)[1])
        for line in run.stdout.splitlines() if line.startswith("received:")
    ]
    assert sorted(_summary(r["path"], r["body"]) for r in received) == EXPECTED[name]
    assert all("createdAt" in r["body"] for r in received)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_with_a_key_sends_to_the_configured_host(
    runs: dict[str, Runs], name: str
) -> None:
    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)
    run, server = runs[name].with_key, runs[name].server
    assert run.returncode == 0, run.stderr
    assert "received:" not in run.stdout
    assert sorted(_summary(r.path, r.body) for r in server.requests) == EXPECTED[name]
    basic = "Basic " + base64.b64encode(b"k-test:").decode()
    assert all(r.headers["Authorization"] == basic for r in server.requests)
