"""The durable outbox, tested the way it fails in production: real processes, SIGKILL, exits during
an outage, processes sharing one file, and fork, against loopback servers."""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from interakt_logging import InteraktHandler, QueueFullError
from interakt_logging._backlog import FlushMarker
from interakt_logging._outbox import OutboxBacklog
from interakt_logging._payload import EVENTS_PATH, Payload
from interakt_logging._stats import Counters
from interakt_logging.testing import MockInteraktServer, Reply

from .conftest import wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")

# A process with an outbox handler, driven line by line on stdin; it answers each command with
# one JSON line. Its exit report is registered before interakt_logging is imported, so it runs
# after the library's exit drain (atexit runs handlers last-in, first-out).
CHILD = textwrap.dedent("""
    import atexit, json, logging, sys
    config = json.loads(sys.argv[1])
    errors = []

    def reply(**answer):
        print(json.dumps(answer), flush=True)

    atexit.register(lambda: reply(exited=True, stats=handler.stats(), errors=errors))
    import interakt_logging._outbox
    interakt_logging._outbox.ADOPT_INTERVAL = config.pop("adopt_interval", 30.0)
    from interakt_logging import InteraktHandler
    handler = InteraktHandler(on_error=lambda e, p: errors.append(type(e).__name__), **config)
    log = logging.getLogger("outbox-child")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    reply(ready=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "log":
            for i in range(int(args[1])):
                tag = {"user_id": "u1", "traits": {"key": f"{args[0]}-{i}"}}
                log.info("Outbox Test", extra={"interakt_event": tag})
            reply(logged=int(args[1]))
        elif command == "flush":
            reply(flushed=bool(handler.flush(float(args[0]))), stats=handler.stats(), errors=errors)
        elif command == "exit":
            break
""")


class Child:
    """A CHILD process; ``ask`` sends a command and returns its answer (or fails with stderr)."""

    def __init__(self, **config: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_answers, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        assert self.answer()["ready"]

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def answer(self, timeout: float = 30) -> dict[str, Any]:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(
                "no answer from the child; stderr:\n" + "".join(self.stderr)
            ) from None

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def exit(self) -> dict[str, Any]:
        """End normally (the exit drain runs); returns the report written after it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        report = self.answer()
        assert self.proc.wait(30) == 0, "".join(self.stderr)
        return report

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(**config: Any) -> Child:
        child = Child(**config)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(30)


@pytest.fixture
def down() -> Iterator[MockInteraktServer]:
    """The API in an outage: every request answered 503."""
    with MockInteraktServer(responder=lambda request: Reply(503)) as srv:
        yield srv


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the outbox file the way an operator would, with a connection of this process."""
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the tables are not created yet
        return []
    finally:
        db.close()


def rows(path: Path) -> int:
    found = query(path, "SELECT COUNT(*) FROM outbox")
    return int(found[0][0]) if found else 0


def wait_for_rows(path: Path, count: int, timeout: float = 20) -> None:
    wait_until(lambda: rows(path) == count,
               lambda: f"outbox holds {rows(path)} rows, expected {count}", timeout)


def fail(error: Exception, reported: Any) -> None:
    """The ``report_unsent`` of a backlog that must not reject anything."""
    raise AssertionError(f"rejected: {error} {reported}")


def keys(server: MockInteraktServer) -> list[str]:
    return [body["traits"]["key"] for body in server.events("Outbox Test")]


def stuck_with_rows(start: Callable[..., Child], down: MockInteraktServer, outbox: Path,
                    count: int) -> Child:
    """A process in an outage that has logged A-0 .. A-<count-1>, all of them on disk."""
    child = start(host=down.url, outbox=str(outbox), max_retries=100)
    child.ask(f"log A {count}")
    wait_for_rows(outbox, count)
    return child


@pytest.mark.slow
def test_a_killed_process_leaves_its_rows_and_the_next_delivers_each_once_oldest_first(
    tmp_path: Path, children: Callable[..., Child], down: MockInteraktServer,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    stuck_with_rows(children, down, outbox, 200).kill()

    with MockInteraktServer() as up:
        second = children(host=up.url, outbox=str(outbox), workers=1)  # one worker: strict order
        answer = second.ask("flush 20")  # also waits for the rows not loaded into memory yet
        assert answer["flushed"] and answer["errors"] == []
        assert answer["stats"]["adopted"] == 200 and answer["stats"]["sent"] == 200
        assert keys(up) == [f"A-{i}" for i in range(200)]
        second.exit()
    assert rows(outbox) == 0
    assert query(outbox, "SELECT * FROM owners") == []


@pytest.mark.slow
def test_exit_during_an_outage_keeps_the_leftovers_for_the_next_process(
    tmp_path: Path, children: Callable[..., Child], down: MockInteraktServer,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    first = children(host=down.url, outbox=str(outbox), max_retries=100, shutdown_timeout=0.5)
    first.ask("log A 50")
    report = first.exit()
    assert report["errors"] == [] and report["stats"]["failed"] == 0  # nothing reported lost
    assert "50 payload(s) undelivered: 0 lost, 50 kept in the outbox" in "".join(first.stderr)
    assert rows(outbox) == 50

    with MockInteraktServer() as up:
        second = children(host=up.url, outbox=str(outbox))
        answer = second.ask("flush 20")
        assert answer["flushed"] and answer["stats"]["adopted"] == 50
        assert sorted(keys(up)) == sorted(f"A-{i}" for i in range(50))
        second.exit()
    assert rows(outbox) == 0


def test_payloads_beyond_outbox_max_bytes_are_dropped_and_reported(
    tmp_path: Path, down: MockInteraktServer, logger: logging.Logger,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    errors: list[Exception] = []
    handler = make_handler(
        host=down.url, outbox=outbox, outbox_max_bytes=4096, max_retries=100,
        shutdown_timeout=0.2, on_error=lambda error, payload: errors.append(error),
    )
    logger.addHandler(handler)
    for i in range(40):
        tag = {"user_id": "1", "traits": {"pad": "x" * 300, "i": i}}
        logger.info("Big", extra={"interakt_event": tag})
    stats = handler.stats
    wait_until(lambda: stats()["outboxed"] + stats()["dropped"] >= 40, lambda: str(stats()))
    stats = handler.stats()
    assert 0 < stats["outboxed"] < 40
    assert stats["dropped"] == 40 - stats["outboxed"] == len(errors)
    assert all(isinstance(error, QueueFullError) for error in errors)
    handler.close()
    assert len(errors) == stats["dropped"]  # the rows it kept are not reported as lost
    assert rows(outbox) == stats["outboxed"]


def test_a_flush_counts_rows_that_are_only_on_disk(tmp_path: Path) -> None:
    # The backlog contract directly: a marker placed right after the outbox adopted rows (none
    # loaded into memory yet, and more of them than the in-memory window) waits for them all.
    path = str(tmp_path / "outbox.sqlite3")
    ended = OutboxBacklog(path, room=10, max_bytes=1 << 20, counters=Counters(), report_unsent=fail)
    assert ended.put_batch([Payload(EVENTS_PATH, b'{"n":%d}' % i, 0.0) for i in range(25)]) == []
    ended.close()  # its 25 rows stay, its lock is released
    counters = Counters()
    backlog = OutboxBacklog(path, room=10, max_bytes=1 << 20, counters=counters, report_unsent=fail)
    assert backlog.has_leftovers()
    marker = FlushMarker()
    backlog.add_marker(marker)
    taken = []
    while (payload := backlog.take(0)) is not None:
        assert not marker.done.is_set()
        taken.append(payload.body)
        backlog.finish(payload, delivered=True)
    assert taken == [b'{"n":%d}' % i for i in range(25)]  # oldest first
    assert marker.done.is_set() and marker.finished
    assert counters.snapshot()["adopted"] == 25 and len(backlog) == 0
    backlog.close()
    assert rows(Path(path)) == 0


@pytest.mark.slow
def test_processes_sharing_an_outbox_keep_their_own_rows_until_one_dies(
    tmp_path: Path, children: Callable[..., Child], down: MockInteraktServer,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    stuck = stuck_with_rows(children, down, outbox, 100)
    with MockInteraktServer() as up:
        # The second process opens the file after the first has rows, so its adoption at open
        # (and every 0.1 s after) sees a live owner and leaves them alone.
        live = children(host=up.url, outbox=str(outbox), adopt_interval=0.1)
        live.ask("log B 100")
        answer = live.ask("flush 20")
        assert answer["flushed"] and answer["stats"]["adopted"] == 0
        assert sorted(keys(up)) == sorted(f"B-{i}" for i in range(100))
        assert rows(outbox) == 100

        stuck.kill()
        up.wait_for(200)
        answer = live.ask("flush 20")
        assert answer["flushed"] and answer["stats"]["adopted"] == 100
        counts = collections.Counter(keys(up))
        assert set(counts) == {f"{p}-{i}" for p in "AB" for i in range(100)}
        assert set(counts.values()) == {1}
        live.exit()
    assert rows(outbox) == 0


# The start of the fork scripts: a handler configured from argv[1] (JSON) and ``burst``, which
# logs ``count`` events and waits until ``on_disk`` payloads in all are in the outbox.
FORK_PRELUDE = """
import json, logging, os, sys, time
from interakt_logging import InteraktHandler
handler = InteraktHandler(**json.loads(sys.argv[1]))
log = logging.getLogger("forking")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(handler)

def burst(prefix, count, on_disk=0):
    for i in range(count):
        tag = {"user_id": "u1", "traits": {"key": f"{prefix}-{i}"}}
        log.info("Outbox Test", extra={"interakt_event": tag})
    deadline = time.monotonic() + 20
    while handler.stats()["outboxed"] < on_disk:  # no event says "on disk": poll, bounded
        if time.monotonic() > deadline:
            sys.exit(f"only {handler.stats()['outboxed']} of {on_disk} payloads reached the outbox")
        time.sleep(0.01)
"""


def run_forking(script: str, **config: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", FORK_PRELUDE + textwrap.dedent(script), json.dumps(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_a_forked_child_uses_the_same_outbox_and_the_parent_is_unaffected(
    tmp_path: Path, server: MockInteraktServer,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    done = run_forking("""
        burst("P", 50)  # the parent's listener and workers are busy while it forks
        pid = os.fork()
        if pid == 0:
            burst("C", 50)
            ok = handler.flush(20)
            handler.close()
            os._exit(0 if ok else 3)
        burst("Q", 50)  # while the child works and closes
        _, status = os.waitpid(pid, 0)
        burst("R", 50)  # after the child has exited
        flushed = bool(handler.flush(20))
        print(json.dumps({"child": status, "flushed": flushed, "stats": handler.stats()}))
        handler.close()
    """, host=server.url, outbox=str(outbox))
    report = json.loads(done.stdout)
    assert report["child"] == 0 and report["flushed"], done.stderr
    assert report["stats"]["sent"] == 150 and report["stats"]["outboxed"] == 150
    counts = collections.Counter(keys(server))
    assert set(counts) == {f"{p}-{i}" for p in "PCQR" for i in range(50)}
    assert set(counts.values()) == {1}
    assert rows(outbox) == 0
    assert query(outbox, "SELECT * FROM owners") == []
    assert query(outbox, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.slow
def test_a_parent_closing_its_outbox_does_not_pull_the_file_from_under_its_forked_child(
    tmp_path: Path, down: MockInteraktServer,
) -> None:
    # Were the parent's SQLite connection inherited open, the child's own connection would
    # share its lock bookkeeping and hold no real lock; the parent's close would then take the
    # file as its alone, checkpoint and delete the WAL the child still writes to: D-* lost.
    outbox = tmp_path / "outbox.sqlite3"
    run_forking("""
        burst("P", 5, on_disk=5)  # the parent's connection is open when it forks
        to_parent, to_child = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            burst("C", 5, on_disk=5)  # a new pipeline: its own counters
            os.write(to_parent[1], b"1")
            os.read(to_child[0], 1)
            burst("D", 5, on_disk=10)  # after the parent closed its outbox
            handler.close()
            os._exit(0)
        os.read(to_parent[0], 1)
        handler.close()
        os.write(to_child[1], b"1")
        _, status = os.waitpid(pid, 0)
        sys.exit(status)
    """, host=down.url, outbox=str(outbox), max_retries=100, shutdown_timeout=0.2)
    bodies = [json.loads(body) for (body,) in query(outbox, "SELECT body FROM outbox")]
    assert sorted(body["traits"]["key"] for body in bodies) == sorted(
        f"{p}-{i}" for p in "PCD" for i in range(5)
    )
    assert query(outbox, "PRAGMA integrity_check") == [("ok",)]
