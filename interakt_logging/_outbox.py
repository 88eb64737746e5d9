"""The durable outbox: the backlog kept in an SQLite file, so payloads outlive the process.

The listener writes each drained batch to the file in one transaction before anything is posted;
a row is deleted once its payload got a 2xx or failed for good. Rows left behind by a process
that was killed, or that exited during an outage, are delivered by the next process that opens
the file, oldest first. Only a window of rows (``room``) is held in memory; the rest stay on disk.

Several processes may share one file (gunicorn or Celery workers). The rule:

- Every open outbox is an *owner*: a random token, a row in the ``owners`` table and a lock file
  ``<outbox>.owners/<token>.lock`` held with a POSIX lock (``fcntl.lockf``) for the owner's
  lifetime. An owner only ever takes, delivers and deletes its own rows.
- The kernel releases a POSIX lock when its process ends, however it ends (SIGKILL included), and
  a forked child does not inherit it. An owner whose lock file can be locked (or is missing) is
  gone; a live owner claims its rows with ``UPDATE outbox SET owner = me WHERE owner = gone`` in
  one transaction, so each row is adopted by exactly one process.
- Owners look for gone owners when they open the file and every ``ADOPT_INTERVAL`` seconds
  while running. A process whose outbox holds rows of gone owners starts its sender at once.

WAL mode lets the processes write without blocking each other's readers; ``synchronous=NORMAL``
skips the fsync on each commit (a commit is in the OS page cache when it returns, which is all a
killed process needs; only a power loss or kernel crash can undo the last commits). The file must
be on a local file system: WAL and POSIX locks are unreliable over NFS.

Fork: an SQLite connection must not cross a fork, and the child's copy must not be closed either
(closing it could checkpoint and delete the WAL file under the parent). So the connection is
closed just before a fork and reopened on next use in the parent; the child builds a new pipeline
with a new owner, and keeps the parent's outbox objects referenced, unused, for its lifetime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import time
import weakref
from typing import IO, Iterator, List, Optional, Set, Tuple, cast

from ._backlog import FlushMarker, MemoryBacklog
from ._errors import ValidationError
from ._payload import Payload
from ._stats import Counters

try:
    import fcntl

    HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    HAVE_FCNTL = False

logger = logging.getLogger("interakt_logging")

ADOPT_INTERVAL = 30.0  # seconds between looks for rows of owners that are gone
BUSY_TIMEOUT = 10.0  # seconds a statement waits for another process's write transaction
ROW_OVERHEAD = 64  # bytes counted per row on top of path and body (id, owner, time, index)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL,"
    " path TEXT NOT NULL, body BLOB NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS outbox_by_owner ON outbox (owner, id)",
    "CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, pid INTEGER NOT NULL,"
    " since REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO totals VALUES (1, 0)",
    "CREATE TRIGGER IF NOT EXISTS outbox_added AFTER INSERT ON outbox"
    " BEGIN UPDATE totals SET bytes = bytes + NEW.size; END",
    "CREATE TRIGGER IF NOT EXISTS outbox_removed AFTER DELETE ON outbox"
    " BEGIN UPDATE totals SET bytes = bytes - OLD.size; END",
)
_INSERT = "INSERT INTO outbox (owner, path, body, created, size) VALUES (?, ?, ?, ?, ?)"


class OutboxBacklog(MemoryBacklog):
    """The backlog on disk. ``max_bytes`` bounds the payload bytes the file holds (all owners
    together); what does not fit is returned by ``put_batch`` and ``keep`` and reported."""

    def __init__(self, path: str, *, room: int, max_bytes: int, counters: Counters) -> None:
        super().__init__(room)
        if not HAVE_FCNTL:  # pragma: no cover - Windows
            raise ValidationError(
                "outbox", path, "a platform with POSIX file locks (fcntl: Linux, macOS)"
            )
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
            raise ValidationError("outbox", path, "a file path in an existing, writable directory")
        self._owners_dir = self.path + ".owners"
        self._max_bytes = max_bytes
        self._counters = counters
        self._pid = os.getpid()
        self._db: Optional[sqlite3.Connection] = None
        self._owner: Optional[str] = None
        self._owner_lock: Optional[IO[bytes]] = None
        self._rows = 0  # rows of this owner in the file: in memory (waiting, in flight) or not
        self._cursor = 0  # every row of this owner with id <= _cursor is in memory or finished
        self._next_adoption = 0.0
        self._closed = False
        self._warned: Set[str] = set()
        self._leftovers = False
        if os.path.exists(self.path):
            try:
                self._leftovers = self._peek()
            except sqlite3.Error as exc:
                raise ValidationError(
                    "outbox", path, f"an interakt-logging outbox file, or a new path ({exc})"
                ) from None
        _live.add(self)

    def __repr__(self) -> str:
        return f"<OutboxBacklog {self.path!r} owner={self._owner}>"

    def __len__(self) -> int:
        return max(0, self._rows - len(self._in_flight))

    def has_leftovers(self) -> bool:
        return self._leftovers

    # -- the listener's side --------------------------------------------------------------------

    def wait_for_room(self, timeout: float) -> bool:
        """Always room: the disk is the buffer, so the listener keeps draining the queue during
        an outage; what exceeds ``max_bytes`` comes back from ``put_batch`` as not kept."""
        return True

    def put_batch(self, payloads: List[Payload]) -> List[Payload]:
        """Write the batch in one transaction; the rows' ids become the payloads' seq."""
        with self._lock:
            try:
                kept, not_kept = self._write(payloads)
            except sqlite3.Error as exc:
                self._warn(exc)
                return payloads
            if kept and not self._stopping:
                if self._unloaded() == len(kept) and len(self._waiting) < self._room:
                    self._waiting.extend(kept)  # nothing older on disk only: skip the reread
                    self._cursor = cast(int, kept[-1].outbox_id)
                else:
                    self._refill()
                self._has_work.notify(len(kept))
            return not_kept

    def add_marker(self, marker: FlushMarker) -> None:
        with self._lock:
            try:
                self._conn()  # so the rows adopted at open count for this flush
            except sqlite3.Error as exc:
                self._warn(exc)
        super().add_marker(marker)

    def keep(self, payloads: List[Payload]) -> List[Payload]:
        """At shutdown: write what is not on disk yet (still queued); return what did not fit."""
        fresh = [payload for payload in payloads if payload.outbox_id is None]
        if not fresh:
            return []
        with self._lock:
            try:
                return self._write(fresh)[1]
            except sqlite3.Error as exc:
                self._warn(exc)
                return fresh

    # -- the workers' side ----------------------------------------------------------------------

    def take(self, timeout: float) -> Optional[Payload]:
        with self._lock:
            if not self._stopping:
                try:
                    self._conn()
                    if time.monotonic() >= self._next_adoption:
                        self._adopt()
                    self._refill()
                except sqlite3.Error as exc:
                    self._warn(exc)
        return super().take(timeout)

    def finish(self, payload: Payload, delivered: bool) -> bool:
        """Delete the row. Also when shutdown already took the payload over but it was just
        delivered: keeping it would send it twice."""
        with self._lock:
            tracked = id(payload) in self._in_flight
            if tracked or (delivered and not self._closed):
                try:
                    self._rows -= self._conn().execute(
                        "DELETE FROM outbox WHERE id = ? AND owner = ?",
                        (payload.outbox_id, self._owner),
                    ).rowcount
                except sqlite3.Error as exc:
                    self._warn(exc)
        return super().finish(payload, delivered)

    def close(self) -> None:
        """Give up ownership: rows left stay in the file for the next process; the owner's entry
        goes when none are left. Never closes what a forked child inherited."""
        with self._lock:
            if self._closed or self._pid != os.getpid():
                return
            self._closed = True
            _live.discard(self)
            db, self._db = self._db, None
            if self._owner is None:
                return
            if db is not None:
                try:
                    if not db.execute(
                        "SELECT 1 FROM outbox WHERE owner = ? LIMIT 1", (self._owner,)
                    ).fetchone():
                        db.execute("DELETE FROM owners WHERE owner = ?", (self._owner,))
                except sqlite3.Error as exc:
                    self._warn(exc)
                finally:
                    db.close()
            _remove(self._lock_path(self._owner))
            if self._owner_lock is not None:
                self._owner_lock.close()

    # -- internals (the caller holds self._lock) ------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened on first use (and again after a fork suspended it). The first
        open makes this backlog an owner and adopts the rows of owners that are gone."""
        db = self._db
        if db is not None:
            return db
        if self._closed or self._pid != os.getpid():
            raise sqlite3.OperationalError("the outbox is closed")
        db = _connect(self.path)
        first = self._owner is None
        if first:
            try:
                self._register(db)
            except BaseException:
                db.close()
                raise
        self._db = db
        if first:
            self._adopt()
        return db

    def _register(self, db: sqlite3.Connection) -> None:
        token = secrets.token_hex(8)
        os.makedirs(self._owners_dir, exist_ok=True)
        lock = open(self._lock_path(token), "xb", buffering=0)  # noqa: SIM115 - held for life
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(b"%d\n" % os.getpid())
            db.execute("INSERT INTO owners VALUES (?, ?, ?)", (token, os.getpid(), time.time()))
        except BaseException:
            _remove(self._lock_path(token))
            lock.close()
            raise
        self._owner, self._owner_lock = token, lock

    def _lock_path(self, owner: str) -> str:
        return os.path.join(self._owners_dir, owner + ".lock")

    def _write(self, payloads: List[Payload]) -> Tuple[List[Payload], List[Payload]]:
        """Insert what fits under max_bytes in one transaction; returns (kept, not kept)."""
        db = self._conn()
        rows: List[Tuple[Payload, int]] = []
        not_kept: List[Payload] = []
        with _transaction(db):
            (total,) = db.execute("SELECT bytes FROM totals").fetchone()
            for payload in payloads:
                size = len(payload.path) + len(payload.body) + ROW_OVERHEAD
                if total + size > self._max_bytes:
                    not_kept.append(payload)
                    continue
                total += size
                cursor = db.execute(
                    _INSERT, (self._owner, payload.path, payload.body, payload.created, size)
                )
                rows.append((payload, cast(int, cursor.lastrowid)))
        for payload, row_id in rows:
            payload.seq = payload.outbox_id = row_id
        if rows:
            self._rows += len(rows)
            self._last_seq = rows[-1][1]
            self._counters.add("outboxed", len(rows))
        return [payload for payload, _ in rows], not_kept

    def _unloaded(self) -> int:
        """Rows of this owner that are only on disk."""
        return self._rows - len(self._waiting) - len(self._in_flight)

    def _refill(self) -> None:
        """Top the in-memory window up from disk, oldest rows first."""
        want = self._room - len(self._waiting)
        if want <= 0 or self._unloaded() <= 0:
            return
        in_memory = {payload.outbox_id for payload in self._in_flight.values()}
        rows = self._conn().execute(
            "SELECT id, path, body, created FROM outbox WHERE owner = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (self._owner, self._cursor, want + len(in_memory)),
        ).fetchall()
        for row_id, path, body, created in rows:
            self._cursor = row_id
            if row_id in in_memory:
                continue
            payload = Payload(path, bytes(body), created)
            payload.seq = payload.outbox_id = row_id
            self._waiting.append(payload)
            if len(self._waiting) >= self._room:
                break

    def _adopt(self) -> None:
        """Claim the rows of every owner that is gone (each claim is one transaction)."""
        self._next_adoption = time.monotonic() + ADOPT_INTERVAL
        db = self._conn()
        claimed = 0
        for owner, lock_path in _gone_owners(db, self._owners_dir):
            with _transaction(db):
                claimed += db.execute(
                    "UPDATE outbox SET owner = ? WHERE owner = ?", (self._owner, owner)
                ).rowcount
                db.execute("DELETE FROM owners WHERE owner = ?", (owner,))
            _remove(lock_path)
        if not claimed:
            return
        (newest,) = db.execute(
            "SELECT MAX(id) FROM outbox WHERE owner = ?", (self._owner,)
        ).fetchone()
        self._rows += claimed
        self._last_seq = max(self._last_seq, newest or 0)
        self._waiting.clear()  # reread from disk, in id order with the adopted rows
        self._cursor = 0
        self._counters.add("adopted", claimed)
        self._has_work.notify_all()
        logger.info(
            "interakt-logging: took over %d payload(s) that ended processes left in the "
            "outbox %s", claimed, self.path,
        )

    def _oldest_seq(self) -> Optional[int]:
        if self._unloaded() <= 0:
            return super()._oldest_seq()
        try:
            oldest: Optional[int] = self._conn().execute(
                "SELECT MIN(id) FROM outbox WHERE owner = ?", (self._owner,)
            ).fetchone()[0]
        except sqlite3.Error:
            return 0  # unknown: hold the markers (shutdown releases them)
        return oldest

    def _peek(self) -> bool:
        """At construction: does the file hold rows of owners that are gone?"""
        db = _connect(self.path)
        try:
            for owner, _ in _gone_owners(db, self._owners_dir):
                if db.execute("SELECT 1 FROM outbox WHERE owner = ? LIMIT 1", (owner,)).fetchone():
                    return True
            return False
        finally:
            db.close()

    def _suspend(self) -> None:
        """Before a fork: close the connection (reopened on next use)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _warn(self, exc: sqlite3.Error) -> None:
        message = str(exc)
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(
                "interakt-logging: outbox %s: %s (further occurrences are not logged)",
                self.path, message,
            )


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        with _transaction(db):
            for statement in _SCHEMA:
                db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock up front (waiting up to BUSY_TIMEOUT)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _gone_owners(db: sqlite3.Connection, owners_dir: str) -> Iterator[Tuple[str, str]]:
    """Yield (owner, lock path) of each registered owner whose process is gone, holding its lock
    file meanwhile. Owners living in this process are skipped: probing their lock files here
    would succeed (POSIX locks never conflict within a process) and closing the probe would
    release their lock."""
    pid = os.getpid()
    here = {backlog._owner for backlog in list(_live) if backlog._pid == pid}
    for (owner,) in db.execute("SELECT owner FROM owners").fetchall():
        if owner in here:
            continue
        lock_path = os.path.join(owners_dir, owner + ".lock")
        try:
            lock = open(lock_path, "r+b", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            yield owner, lock_path  # closed without a lock, or its lock file was cleaned up
            continue
        except OSError:
            continue  # cannot tell: leave it alone
        with lock:
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: the owner is alive
            yield owner, lock_path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# Fork handling. Every open outbox of this process is in _live; a fork waits until none is in
# the middle of a statement (by taking their locks), closes their connections, and in the child
# keeps the parent's objects referenced for good, so nothing ever closes them there.
_live: weakref.WeakSet[OutboxBacklog] = weakref.WeakSet()
_forking: List[OutboxBacklog] = []
_inherited: List[OutboxBacklog] = []


def _before_fork() -> None:
    pid = os.getpid()
    for backlog in list(_live):
        if backlog._pid == pid:
            backlog._lock.acquire()
            _forking.append(backlog)
            backlog._suspend()


def _after_fork_in_parent() -> None:
    for backlog in _forking:
        backlog._lock.release()
    _forking.clear()


def _after_fork_in_child() -> None:
    _inherited.extend(_forking)
    _after_fork_in_parent()  # the child's copies of the locks, so a stray call cannot hang


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
