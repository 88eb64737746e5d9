"""The outbox when the disk or its own file is against it: an unusable path refused when the
handler is built, failures later reported with the payloads they concern (no thread dies,
nothing escapes into the app), rows that cannot be stored or read back failing alone, and files
private to their owner whatever the umask."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interakt_logging import DeliveryError, InteraktHandler, ValidationError
from interakt_logging._backlog import FlushMarker
from interakt_logging._cli import main as cli_main
from interakt_logging._outbox import OutboxBacklog, census
from interakt_logging._payload import EVENTS_PATH, USERS_PATH, Payload
from interakt_logging._stats import Counters
from interakt_logging.testing import MockInteraktServer, Reply

from .conftest import wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")


def log_events(logger: logging.Logger, handler: InteraktHandler, count: int, prefix: str) -> None:
    logger.addHandler(handler)
    for i in range(count):
        logger.info("Outbox Fault", extra={"interakt_event": {"user_id": f"{prefix}-{i}"}})
    logger.removeHandler(handler)


def sender_threads(others: frozenset[threading.Thread] = frozenset()) -> set[str]:
    """Names of the pipeline threads running, except ``others`` (of pipelines earlier tests
    left to the exit drain)."""
    names = ("interakt-logging-listener", "interakt-logging-sender")
    return {t.name for t in threading.enumerate() if t.name.startswith(names) and t not in others}


# -- an unusable outbox is refused when the handler is built ------------------------------------


def test_a_file_in_the_way_of_the_owners_directory_is_refused_at_construction(
    tmp_path: Path,
) -> None:
    # Before: accepted; the first batch raised FileExistsError in the listener, which died with
    # its batch (5 payloads never reported, flush False), and close() raised into the app.
    outbox = tmp_path / "outbox.sqlite3"
    (tmp_path / "outbox.sqlite3.owners").write_text("not a directory")
    with pytest.raises(ValidationError) as refused:
        InteraktHandler(outbox=str(outbox), host="http://127.0.0.1:1")
    assert refused.value.field == "outbox"
    assert f"could not make the directory {outbox}.owners" in str(refused.value)
    assert "Not a directory" in str(refused.value)


def test_a_file_that_is_not_an_outbox_is_refused_at_construction(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    outbox.write_bytes(b"these are not the rows you are looking for" * 100)
    with pytest.raises(ValidationError, match="an interakt-logging outbox file, or a new path"):
        InteraktHandler(outbox=str(outbox), host="http://127.0.0.1:1")


def test_a_path_in_a_missing_directory_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="a file path in an existing directory"):
        InteraktHandler(outbox=str(tmp_path / "nowhere" / "outbox.sqlite3"))


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make ``directory`` impossible to write to for this process, as one created by another
    user is: mode 0555, or, for root (whom modes do not stop), the immutable attribute."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    try:
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("running as root without chattr: no directory is unwritable for root")
    if made.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.slow  # chattr is a process
def test_an_owners_directory_this_user_cannot_write_is_refused_at_construction(
    tmp_path: Path,
) -> None:
    # Before: accepted; PermissionError killed the sender threads at the first event.
    owners = tmp_path / "outbox.sqlite3.owners"
    owners.mkdir()
    with unwritable(owners), pytest.raises(ValidationError) as refused:
        InteraktHandler(outbox=str(tmp_path / "outbox.sqlite3"), host="http://127.0.0.1:1")
    assert refused.value.field == "outbox"
    assert f"could not create and lock a file in {owners}" in str(refused.value)


# -- a failure later is reported with its payloads; no thread dies; nothing reaches the app --------


def test_an_owners_directory_broken_after_construction_fails_only_the_payloads_it_concerns(
    tmp_path: Path, server: MockInteraktServer, logger: logging.Logger,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    errors: list[Exception] = []
    others = frozenset(threading.enumerate())
    handler = make_handler(outbox=str(outbox), on_error=lambda error, payload: errors.append(error))
    shutil.rmtree(f"{outbox}.owners")  # the file is first used by the listener, now
    Path(f"{outbox}.owners").write_text("in the way")

    log_events(logger, handler, 5, "A")
    assert handler.flush(10).failed == 5
    assert handler.stats()["failed"] == 5 and len(errors) == 5
    assert all(isinstance(e, DeliveryError) and e.reason == "outbox" for e in errors)
    assert "Not a directory" in str(errors[0])
    # the listener and every sender the pipeline started are alive
    assert sender_threads(others) == {"interakt-logging-listener",
                                      *(t.name for t in handler.pipeline.workers.threads)}

    os.unlink(f"{outbox}.owners")  # repaired: the outbox works again, nothing else to do
    log_events(logger, handler, 5, "B")
    assert handler.flush(10)
    assert sorted(e["userId"] for e in server.events()) == [f"B-{i}" for i in range(5)]
    handler.close()  # before: FileExistsError raised into the app here
    assert handler.stats()["sent"] == 5 and len(errors) == 5


DISK_FULL_CHILD = textwrap.dedent("""
    import json, logging, resource, signal, sys, threading, time
    from interakt_logging import InteraktHandler
    reasons = []
    handler = InteraktHandler(
        host=sys.argv[2], outbox=sys.argv[1], max_retries=1000, shutdown_timeout=0.2,
        on_error=lambda error, payload: reasons.append(getattr(error, "reason", repr(error))),
    )
    # The disk fills up after the handler was built: no file may grow past 512 KiB from now on
    # (a write beyond it fails with EFBIG instead of raising SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))
    log = logging.getLogger("disk-full")
    log.propagate = False
    log.addHandler(handler)
    for i in range(600):
        log.warning("Big", extra={"interakt_event": {"user_id": "1", "traits": {"pad": "x" * 2000}}})
    deadline = time.monotonic() + 30
    while True:  # no event says "stored or reported": poll, bounded
        stats = handler.stats()
        if stats["outboxed"] + stats["failed"] >= 600 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    # the senders the pipeline counts on, all alive (one may start while this reads: no count)
    pipeline = handler.pipeline
    dead = [getattr(t, "name", "listener") for t in [pipeline.listener.thread, *pipeline.workers.threads]
            if t is None or not t.is_alive()]
    print(json.dumps({"stats": stats, "reasons": sorted(set(reasons)), "failed": len(reasons),
                      "dead": dead}), flush=True)
    handler.close()
""")


@pytest.mark.slow
def test_a_disk_that_fills_up_later_fails_the_payloads_it_refuses_and_nothing_else(
    tmp_path: Path,
) -> None:
    with MockInteraktServer(responder=lambda request: Reply(503)) as down:
        done = subprocess.run(
            [sys.executable, "-c", DISK_FULL_CHILD, str(tmp_path / "outbox.sqlite3"), down.url],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stats = report["stats"]
    assert 0 < stats["outboxed"] < 600 and stats["outboxed"] + stats["failed"] == 600, report
    assert report["failed"] == stats["failed"] and report["reasons"] == ["outbox"]
    assert report["dead"] == [], report  # the listener and every sender still run
    assert "Traceback" not in done.stderr, done.stderr


# -- rows that cannot be stored or read back fail alone ------------------------------------------


class Rejected:
    """A backlog's ``report_unsent``: records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Exception, Any]] = []

    def __call__(self, error: Exception, reported: Any) -> None:
        self.calls.append((error, reported))


@pytest.mark.parametrize("created", [math.nan, math.inf, -math.inf, 1e20, 1732618359123.0])
def test_a_payload_whose_row_cannot_be_written_fails_alone(tmp_path: Path, created: float) -> None:
    # Before: NaN failed the NOT NULL column and the whole batch was reported "outbox full";
    # inf was stored and poisoned every later process.
    rejected = Rejected()
    backlog = OutboxBacklog(str(tmp_path / "outbox.sqlite3"), room=10, max_bytes=1 << 20,
                            counters=Counters(), report_unsent=rejected)
    batch = [Payload(EVENTS_PATH, b'{"n":%d}' % i, 1.0e9 + i) for i in range(5)]
    batch[2].created = created
    assert backlog.put_batch(batch) == []
    [(error, reported)] = rejected.calls
    assert isinstance(error, ValidationError) and error.field == "created_at"
    assert reported["body"] == {"n": 2} and reported["path"] == EVENTS_PATH
    assert [p.outbox_id is not None for p in batch] == [True, True, False, True, True]
    assert len(backlog) == 4
    backlog.close()


def test_a_batch_the_disk_refuses_reports_its_unstorable_payload_once(tmp_path: Path) -> None:
    """Regression: a payload that failed alone (its row could not be stored) in a batch whose
    transaction the disk then refused was reported twice: alone, and with the whole batch.
    Reproduced 1/1 before the fix (three reports for two payloads)."""
    rejected = Rejected()
    backlog = OutboxBacklog(str(tmp_path / "outbox.sqlite3"), room=10, max_bytes=1 << 20,
                            counters=Counters(), report_unsent=rejected)
    try:
        backlog.add_marker(FlushMarker())  # opens the file: the owner is registered

        def deny_inserts(action: int, table: Any, *_: Any) -> int:
            refused = action == sqlite3.SQLITE_INSERT and table == "outbox"
            return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

        backlog._conn().set_authorizer(deny_inserts)  # the disk refuses the batch
        batch = [Payload(EVENTS_PATH, b'{"n":0}', math.nan), Payload(EVENTS_PATH, b'{"n":1}', 1e9)]
        assert backlog.put_batch(batch) == []
        bodies = [payload["body"] for _, payload in rejected.calls]  # text when not renderable
        reported = sorted((b if isinstance(b, dict) else json.loads(b))["n"] for b in bodies)
        assert reported == [0, 1], rejected.calls
        assert all(isinstance(error, DeliveryError) for error, _ in rejected.calls)
    finally:
        backlog.close()


@pytest.fixture
def corrupt_outbox(tmp_path: Path) -> Path:
    """An outbox left by an ended process: 6 rows, of which one has time inf, one a time that is
    text, and one an unknown path."""
    path = tmp_path / "outbox.sqlite3"
    ended = OutboxBacklog(str(path), room=10, max_bytes=1 << 20, counters=Counters(),
                          report_unsent=Rejected())
    ended.put_batch([Payload(EVENTS_PATH, b'{"userId":"u%d","event":"E"}' % i, 1.7e9 + i)
                     for i in range(5)] + [Payload(USERS_PATH, b'{"userId":"u5"}', 1.7e9)])
    ended.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE outbox SET created = 9e999 WHERE id = 2")  # inf
        db.execute("UPDATE outbox SET created = 'yesterday' WHERE id = 3")
        db.execute("UPDATE outbox SET path = '/v1/elsewhere/' WHERE id = 4")
    db.close()
    return path


def test_outbox_stats_counts_corrupt_rows_instead_of_crashing(
    corrupt_outbox: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: OverflowError out of `interakt-logging outbox stats` for the inf row.
    found = census(str(corrupt_outbox))
    assert (found.total, found.left, found.unusable) == (6, 6, 3)
    assert found.oldest == 1.7e9
    assert cli_main(["outbox", "stats", str(corrupt_outbox)]) == 0
    out = capsys.readouterr().out
    assert "6 payload(s)" in out and "the oldest from 2023-11-14T22:13:20.000Z" in out
    assert "3 corrupt" in out


def test_corrupt_rows_are_reported_and_dropped_and_the_rest_delivered(
    corrupt_outbox: Path, server: MockInteraktServer,
    make_handler: Callable[..., InteraktHandler],
) -> None:
    errors: list[tuple[Exception, Any]] = []
    handler = make_handler(outbox=str(corrupt_outbox),
                           on_error=lambda error, payload: errors.append((error, payload)))
    flushed = handler.flush(10)  # leftovers start the sender at construction
    assert (flushed.delivered, flushed.failed, flushed.pending) == (3, 3, 0)
    assert sorted(e["userId"] for e in server.events()) == ["u0", "u4"]
    assert [u["userId"] for u in server.users()] == ["u5"]
    assert sorted(error.field for error, _ in errors) == ["created_at", "created_at", "path"]
    assert {payload["body"]["userId"] for _, payload in errors} == {"u1", "u2", "u3"}
    stats = handler.stats()
    assert (stats["adopted"], stats["sent"], stats["failed"]) == (6, 3, 3)
    handler.close()
    assert census(str(corrupt_outbox)).total == 0  # nothing left to poison the next restart


def test_a_row_whose_delete_failed_does_not_hold_up_flush(tmp_path: Path) -> None:
    """Regression: when deleting a delivered payload's row failed (I/O error, locked file),
    the row still counted as one of this process's unfinished ones: every later flush waited
    for it to its timeout, and the next process sent it again although a retry of the delete
    could have worked. Reproduced 1/1 before the fix (the marker stayed unreleased)."""
    backlog = OutboxBacklog(str(tmp_path / "outbox.sqlite3"), room=10, max_bytes=10**6,
                            counters=Counters(), report_unsent=Rejected())
    try:
        backlog.put_batch([Payload(EVENTS_PATH, b'{"userId":"1"}', 1732618359.0),
                           Payload(EVENTS_PATH, b'{"userId":"2"}', 1732618359.0)])
        first = backlog.take(1)
        assert first is not None
        denied: list[int] = []

        def deny_one_delete(action: int, *_: Any) -> int:
            if action == sqlite3.SQLITE_DELETE and not denied:
                denied.append(action)
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        backlog._conn().set_authorizer(deny_one_delete)  # the disk fails this delete only
        marker = FlushMarker()
        backlog.add_marker(marker)
        assert backlog.claim(first)
        backlog.finish(first, delivered=True)
        assert denied and not marker.done.is_set()  # the second payload is not finished yet
        second = backlog.take(1)
        assert second is not None and backlog.claim(second)
        backlog.finish(second, delivered=True)
        assert marker.done.is_set() and marker.finished
        assert len(backlog) == 0 and backlog.in_flight == 0
    finally:
        backlog.close()
    assert census(str(tmp_path / "outbox.sqlite3")).total == 0  # the failed delete, retried


# -- private files whatever the umask ------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_outbox_files_are_private_whatever_the_umask(
    tmp_path: Path, logger: logging.Logger, umask: int,
) -> None:
    # Before: the database, -wal, -shm and lock files were 0644 and .owners 0755 under umask 022
    # (0666 / 0777 under umask 0): anyone on the machine could read the phone numbers inside.
    outbox = tmp_path / "outbox.sqlite3"
    previous = os.umask(umask)
    try:
        with MockInteraktServer(responder=lambda request: Reply(503)) as down:
            handler = InteraktHandler(outbox=str(outbox), host=down.url, max_retries=100,
                                      shutdown_timeout=0.1)
            log_events(logger, handler, 3, "P")
            wait_until(lambda: handler.stats()["outboxed"] == 3, lambda: str(handler.stats()))
            modes = {
                str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
                for path in tmp_path.rglob("*")
            }
            handler.close()
    finally:
        os.umask(previous)
    assert {name for name in modes if "/" not in name} == {
        "outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm", "outbox.sqlite3.owners",
    }
    locks = [name for name in modes if name.startswith("outbox.sqlite3.owners/")]
    assert len(locks) == 1 and locks[0].endswith(".lock")
    assert modes == {name: 0o700 if name.endswith(".owners") else 0o600 for name in modes}


def test_an_outbox_file_deleted_while_in_use_reports_what_it_held_at_exit(
    tmp_path: Path, logger: logging.Logger, caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: SQLite went on writing to the deleted file, close() said "8 kept in the outbox",
    # and the 8 payloads vanished with the process, unreported.
    outbox = tmp_path / "outbox.sqlite3"
    errors: list[Exception] = []
    lost: list[str] = []
    with MockInteraktServer(responder=lambda request: Reply(503)) as down:
        # batch_size=2: two rows in memory, the rest only in the file
        handler = InteraktHandler(outbox=str(outbox), host=down.url, max_retries=100,
                                  batch_size=2, workers=1, shutdown_timeout=0.2,
                                  on_error=lambda e, p: (errors.append(e), lost.append(p["body"]["userId"])))
        log_events(logger, handler, 5, "A")
        wait_until(lambda: handler.stats()["outboxed"] == 5, lambda: str(handler.stats()))
        for leftover in tmp_path.glob("outbox.sqlite3*"):
            if leftover.is_file():
                leftover.unlink()
        log_events(logger, handler, 3, "B")
        wait_until(lambda: handler.stats()["outboxed"] == 8, lambda: str(handler.stats()))
        handler.close()
    assert "was deleted or replaced while in use" in caplog.text
    assert len(errors) == 8 and all(isinstance(e, DeliveryError) for e in errors)
    assert sorted(lost) == sorted([f"A-{i}" for i in range(5)] + [f"B-{i}" for i in range(3)])
    assert handler.stats()["failed"] == 8
    assert "0 kept in the outbox" in caplog.text


@pytest.mark.slow  # a fresh outbox file per example: ~0.1 s each
@settings(max_examples=40, deadline=None)
@given(st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**30), max_value=10**30),
    ),
    min_size=1, max_size=8,
))
def test_every_payload_is_stored_or_rejected_once_whatever_its_time(times: list[Any]) -> None:
    """The outbox does not trust its input: any time, finite or not, huge or not, ends stored
    (and reads back as it went in) or rejected alone, never raising, never taking its batch."""
    with tempfile.TemporaryDirectory() as directory:
        rejected = Rejected()
        backlog = OutboxBacklog(os.path.join(directory, "outbox.sqlite3"), room=10,
                                max_bytes=1 << 20, counters=Counters(), report_unsent=rejected)
        batch = [Payload(EVENTS_PATH, b'{"n":%d}' % i, t) for i, t in enumerate(times)]
        assert backlog.put_batch(batch) == []
        stored = [p for p in batch if p.outbox_id is not None]
        assert len(stored) + len(rejected.calls) == len(batch)
        assert all(isinstance(error, ValidationError) for error, _ in rejected.calls)
        taken = [backlog.take(0) for _ in stored]
        assert [(p.body, p.created) for p in taken if p is not None] == [
            (p.body, float(p.created)) for p in stored
        ]
        backlog.close()
