"""A throwaway redis-server on loopback, for tests of ``rate_limit_store`` (re-exported by
``interakt_logging.testing``).

No persistence (``--save "" --appendonly no``), a free port, stopped when the block ends. It
needs ``redis-server`` on PATH (Debian: ``apt-get install redis-server``); readiness is checked
with a raw PING, so redis-py is not needed to start it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from typing import Iterator

__all__ = ["redis_server"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Run a redis-server on 127.0.0.1 for the block; yields its URL (``redis://...:PORT/0``).
    FileNotFoundError when there is no redis-server on PATH, RuntimeError when it does not
    answer within ``timeout`` seconds."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(
            "redis-server is not on PATH (Debian: apt-get install redis-server)"
        )
    for _ in range(3):  # the free port may be taken before redis-server binds it: another
        port = _free_port()
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            if _started(server, port, time.monotonic() + timeout):
                yield f"redis://127.0.0.1:{port}/0"
                return
        finally:
            server.terminate()
            server.wait(10)
    raise RuntimeError("redis-server did not start (three ports tried)")


def _started(server: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once it answers PING; False if it exited (its port was taken, say)."""
    while not _answers_ping(port):
        if server.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on port {port}")
        time.sleep(0.02)
    return True
