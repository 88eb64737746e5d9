"""Real servers, started and stopped as deployments do: what the app queued is delivered, or
reported with a count, however the server stops its processes. Each server listens on a socket
this test bound on 127.0.0.1 (handed over as a file descriptor: no port race) and is killed, with
its whole process group, in ``finally``."""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from interakt_logging.testing import MockInteraktServer

from .conftest import API_KEY

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.slow

WSGI_APP = """
import logging
log = logging.getLogger("shop")
def app(environ, start_response):
    user = environ["QUERY_STRING"].partition("=")[2]
    log.info("Page Viewed", extra={"interakt_event": {"user_id": user}})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@contextlib.contextmanager
def listening_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    with sock:
        yield sock


@contextlib.contextmanager
def running(command: list[str], *, cwd: pathlib.Path, env: dict[str, str],
            pass_fds: tuple[int, ...] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in its own session, its output in ``cwd / "output.txt"``; kill the whole
    process group on the way out, whatever happened."""
    with open(cwd / "output.txt", "wb") as output:
        proc = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, "INTERAKT_API_KEY": API_KEY, **env},
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            pass_fds=pass_fds, start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def output_of(cwd: pathlib.Path) -> str:
    return (cwd / "output.txt").read_text(errors="replace")


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def stop(proc: subprocess.Popen[bytes], sig: int, cwd: pathlib.Path, timeout: float = 60) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout}s after signal {sig}:\n{output_of(cwd)}")


def user_ids(server: MockInteraktServer) -> list[str]:
    return sorted(r.body["userId"] for r in server.delivered)


def test_gunicorn_with_the_example_config_delivers_every_request(
    server: MockInteraktServer, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "shop_app.py").write_text(textwrap.dedent(WSGI_APP))
    config = EXAMPLES / "gunicorn" / "gunicorn.conf.py"
    with listening_socket() as sock, running(
        [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"fd://{sock.fileno()}",
         "shop_app:app"],
        cwd=tmp_path, env={"INTERAKT_HOST": server.url}, pass_fds=(sock.fileno(),),
    ) as proc:
        port = sock.getsockname()[1]
        statuses = [get(port, f"/?user={i}") for i in range(50)]
        assert statuses == [200] * 50, output_of(tmp_path)
        assert stop(proc, signal.SIGTERM, tmp_path) == 0, output_of(tmp_path)
    output = output_of(tmp_path)
    booted = {line.rsplit(" ", 1)[1] for line in output.splitlines() if "Booting worker" in line}
    assert len(booted) == 2, output  # (gunicorn's default config prints its lines twice)
    assert user_ids(server) == sorted(map(str, range(50))), output
