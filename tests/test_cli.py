"""The command line, run as users run it: real subprocesses against the loopback server."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from interakt_logging.testing import MockInteraktServer, Reply

from .conftest import API_KEY

pytestmark = pytest.mark.slow  # every test runs the command line in a process

COMMANDS: List[List[str]] = [
    [], ["demo"], ["send-user"], ["send-event"], ["mock-server"],
    ["outbox"], ["outbox", "stats"], ["outbox", "replay"], ["outbox", "purge"],
]


def _env(**extra: Optional[str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERAKT_")}
    env["INTERAKT_API_KEY"] = API_KEY
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli(*args: str, **env: Optional[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interakt_logging", *args],
        env=_env(**env), capture_output=True, text=True, timeout=60,
    )


def test_help_of_every_command() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "interakt_logging", *command, "--help"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for command in COMMANDS
    ]
    for command, proc in zip(COMMANDS, procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (command, err)
        assert out.startswith(f"usage: interakt-logging {' '.join(command)}".rstrip()), out
    top = cli("--help").stdout
    for command in ("demo", "send-user", "send-event", "mock-server", "outbox"):
        assert command in top


def test_version_and_missing_command() -> None:
    assert cli("--version").stdout.startswith("interakt-logging ")
    result = cli()
    assert result.returncode == 2 and "COMMAND" in result.stderr


def test_demo_without_key_uses_the_mock_and_prints_what_it_received() -> None:
    result = cli("demo", INTERAKT_API_KEY=None)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "No INTERAKT_API_KEY is set" in out
    assert "received 2 request(s)" in out
    assert "POST /v1/public/track/users/ -> 200" in out
    assert "POST /v1/public/track/events/ -> 200" in out
    assert '"event": "Order Placed"' in out and '"orderNumber": "CUS001"' in out


def test_demo_with_a_key_sends_through_the_handler(server: MockInteraktServer) -> None:
    result = cli("demo", "--user-id", "u-7", INTERAKT_HOST=server.url)
    assert result.returncode == 0, result.stderr
    assert f"sending to {server.url}" in result.stdout and "sent=2" in result.stdout
    assert [b["userId"] for b in server.users()] == ["u-7"]
    assert [b["traits"]["orderNumber"] for b in server.events("Order Placed")] == ["CUS001"]


def test_demo_with_a_refused_key_fails(server: MockInteraktServer) -> None:
    server.responder = lambda request: Reply(401)
    result = cli("demo", INTERAKT_HOST=server.url)
    assert result.returncode == 1
    assert "Unauthorized" in result.stdout and "failed=2" in result.stdout


def test_send_event(server: MockInteraktServer) -> None:
    result = cli(
        "send-event", "Order Placed", "--user-id", "42", "--traits", '{"orderNumber": "CUS001"}',
        "--created-at", "2026-01-02T03:04:05Z", "--host", server.url,
    )
    assert result.returncode == 0, result.stderr
    (request,) = server.requests
    assert request.path == "/v1/public/track/events/"
    assert request.body == {
        "event": "Order Placed", "traits": {"orderNumber": "CUS001"}, "userId": "42",
        "createdAt": "2026-01-02T03:04:05.000Z",
    }
    assert '"message": "Accepted"' in result.stdout


def test_send_user_with_phone_and_host_from_the_environment(server: MockInteraktServer) -> None:
    result = cli("send-user", "--phone", "9999999999", "--country-code", "+1",
                 "--traits", '{"name": "John"}', INTERAKT_HOST=server.url)
    assert result.returncode == 0, result.stderr
    assert server.users() == [{
        "traits": {"name": "John"}, "countryCode": "+1", "phoneNumber": "9999999999",
        "createdAt": server.requests[0].body["createdAt"],
    }]


@pytest.mark.parametrize(("args", "named"), [
    (["send-user", "--phone", "99-99"], "--phone"),
    (["send-user", "--phone", "99", "--country-code", "+999"], "--country-code"),
    (["send-user", "--user-id", "1", "--traits", "[1, 2]"], "--traits"),
    (["send-user", "--user-id", "1", "--traits", "{oops"], "--traits"),
    (["send-user"], "--user-id"),
    (["send-event", "", "--user-id", "1"], "NAME"),
    (["send-user", "--user-id", "1", "--host", "http://example.com"], "--host"),
])
def test_bad_input_exits_2_naming_the_option(
    server: MockInteraktServer, args: List[str], named: str
) -> None:
    result = cli(*args, INTERAKT_HOST=server.url)
    assert result.returncode == 2
    assert f"(option {named})" in result.stderr and "expected" in result.stderr
    assert server.requests == []


def test_missing_key_exits_2(server: MockInteraktServer) -> None:
    result = cli("send-user", "--user-id", "1", "--host", server.url, INTERAKT_API_KEY=None)
    assert result.returncode == 2 and "INTERAKT_API_KEY" in result.stderr


def test_api_refusal_exits_1_with_status_and_message(server: MockInteraktServer) -> None:
    server.script(Reply(400, body={"result": False, "message": "Invalid phone number"}))
    result = cli("send-user", "--user-id", "1", "--host", server.url)
    assert result.returncode == 1
    assert "HTTP 400: Invalid phone number" in result.stderr
    assert len(server.requests) == 1  # a 4xx is never retried


def test_unreachable_exits_1(server: MockInteraktServer) -> None:
    server.responder = lambda request: Reply(503)
    result = cli("send-user", "--user-id", "1", "--host", server.url, "--max-retries", "1")
    assert result.returncode == 1 and "503" in result.stderr
    assert len(server.requests) == 2


def test_debug_output_never_shows_the_key(server: MockInteraktServer) -> None:
    dashboard_form = base64.b64encode(f"{API_KEY}:".encode()).decode()
    result = cli("send-user", "--user-id", "1", "--host", server.url, "--debug",
                 INTERAKT_API_KEY=dashboard_form)
    assert result.returncode == 0, result.stderr
    assert "Secret Key form detected" in result.stderr
    assert server.requests[0].headers["Authorization"] == f"Basic {dashboard_form}"
    for secret in (API_KEY, dashboard_form):
        assert secret not in result.stdout + result.stderr


def _read_until(proc: subprocess.Popen[str], text: str, deadline: float) -> str:
    assert proc.stdout is not None
    seen = ""
    while text not in seen:
        assert time.monotonic() < deadline, seen
        line = proc.stdout.readline()
        assert line, f"output ended before {text!r}: {seen}"
        seen += line
    return seen


def test_mock_server_prints_requests_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "interakt_logging", "mock-server", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 60
        banner = _read_until(proc, "export INTERAKT_HOST=", deadline)
        url = banner.split("export INTERAKT_HOST=")[1].split()[0]
        sent = cli("send-event", "Order Placed", "--user-id", "42", INTERAKT_HOST=url)
        assert sent.returncode == 0, sent.stderr
        shown = _read_until(proc, "createdAt", deadline)
        assert "POST /v1/public/track/events/ -> 200" in shown and '"userId": "42"' in shown
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "Stopped after 1 request(s)." in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_mock_server_answers_the_status_asked_for() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "interakt_logging", "mock-server", "--port", "0",
         "--status", "429", "--retry-after", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        banner = _read_until(proc, "export INTERAKT_HOST=", time.monotonic() + 60)
        url = banner.split("export INTERAKT_HOST=")[1].split()[0]
        sent = cli("send-user", "--user-id", "1", "--max-retries", "0", INTERAKT_HOST=url)
        assert sent.returncode == 1 and "HTTP 429" in sent.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_mock_server_port_in_use() -> None:
    with MockInteraktServer() as server:
        port = server.url.rsplit(":", 1)[1]
        result = cli("mock-server", "--port", port)
    assert result.returncode == 1 and f"cannot listen on port {port}" in result.stderr


# -- outbox ------------------------------------------------------------------------------------

_FILL_AND_DIE = """
import logging, os, signal, sys, time
from interakt_logging import InteraktHandler
handler = InteraktHandler(host="http://127.0.0.1:1", outbox=sys.argv[1], max_retries=1000,
                          shutdown_timeout=0.2)
log = logging.getLogger("shop")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.info("Signed Up", extra={"interakt_user": {"user_id": "u0"}})
for i in range(4):
    log.info("Order Placed", extra={"interakt_event": {"user_id": f"u{i}"}})
deadline = time.monotonic() + 30
while handler.stats()["outboxed"] < 5:  # no event says "on disk": poll, bounded
    if time.monotonic() > deadline:
        sys.exit(f"only {handler.stats()['outboxed']} of 5 payloads reached the outbox")
    time.sleep(0.01)
print("ready", flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # held until the test closes stdin
"""


def _fill(path: str, then: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _FILL_AND_DIE, path, then], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def left_outbox(tmp_path: Path) -> str:
    """An outbox holding 5 payloads (1 user, 4 events) of a process killed with SIGKILL."""
    path = str(tmp_path / "outbox.sqlite3")
    proc = _fill(path, "die")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return path


def test_outbox_stats_replay(left_outbox: str, server: MockInteraktServer) -> None:
    stats = cli("outbox", "stats", left_outbox)
    assert stats.returncode == 0, stats.stderr
    assert "5 payload(s) (1 user, 4 event calls)" in stats.stdout
    assert "5 left by ended processes" in stats.stdout
    replay = cli("outbox", "replay", left_outbox, "--host", server.url)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "Delivered 5, failed 0" in replay.stdout
    assert sorted(b["userId"] for b in server.events("Order Placed")) == ["u0", "u1", "u2", "u3"]
    assert len(server.users("u0")) == 1 and len(server.requests) == 5
    assert f"Outbox {left_outbox}: 0 payload(s)" in cli("outbox", "stats", left_outbox).stdout


def test_outbox_replay_refused_exits_1(left_outbox: str, server: MockInteraktServer) -> None:
    server.responder = lambda request: Reply(401)
    replay = cli("outbox", "replay", left_outbox, "--host", server.url)
    assert replay.returncode == 1
    assert "failed 5" in replay.stdout and "5 x Interakt API answered 401" in replay.stdout


def test_outbox_purge(left_outbox: str) -> None:
    dry = cli("outbox", "purge", left_outbox)
    assert dry.returncode == 0 and "run again with --yes" in dry.stdout
    assert "5 left by ended processes" in cli("outbox", "stats", left_outbox).stdout
    purge = cli("outbox", "purge", left_outbox, "--yes")
    assert purge.returncode == 0 and "Deleted 5 payload(s)." in purge.stdout
    assert ": 0 payload(s)" in cli("outbox", "stats", left_outbox).stdout


def test_outbox_of_a_running_process_is_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    proc = _fill(path, "hold")
    try:
        stats = cli("outbox", "stats", path).stdout
        assert "0 left by ended processes" in stats
        assert f"5 held by running processes (pids: {proc.pid})" in stats
        for action in ("replay", "purge"):
            result = cli("outbox", action, path, "--yes" if action == "purge" else "--debug")
            assert result.returncode == 0 and "nothing to do" in result.stdout
    finally:
        proc.communicate("", timeout=60)


def test_outbox_bad_paths(tmp_path: Path) -> None:
    missing = cli("outbox", "stats", str(tmp_path / "missing.sqlite3"))
    assert missing.returncode == 2 and "an existing outbox file" in missing.stderr
    other = tmp_path / "notes.txt"
    other.write_text("not a database " * 100)
    wrong = cli("outbox", "stats", str(other))
    assert wrong.returncode == 2 and "an interakt-logging outbox file" in wrong.stderr
