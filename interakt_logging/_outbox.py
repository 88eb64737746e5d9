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

Files: the database, its ``-wal``/``-shm`` files, the ``.owners`` directory and the lock files
hold phone numbers, so they are created readable by their owner only (0600, the directory 0700)
whatever the umask. ``check_outbox`` proves at construction that all of them can be made and
written; a failure later (disk full, permissions changed) is reported with the payloads it
concerns, and a row that cannot be stored or read back (an unusable time) fails alone.

WAL mode lets the processes write without blocking each other's readers; ``synchronous=NORMAL``
skips the fsync on each commit (a commit is in the OS page cache when it returns, which is all a
killed process needs; only a power loss or kernel crash can undo the last commits). The file must
be on a local file system: WAL and POSIX locks are unreliable over NFS.

Fork: an SQLite connection must not cross a fork, and the child's copy must not be closed either
(closing it could checkpoint and delete the WAL file under the parent). So the connection is
closed just before a fork and reopened on next use in the parent; the child builds a new pipeline
with a new owner, and keeps the parent's outbox objects referenced, unused, for its lifetime.
``_lifecycle`` calls the fork functions at the bottom of this module.

``census`` and ``purge`` are the command line's view of a file; the SQL lives here only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import time
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple, cast

import orjson

from ._backlog import FlushMarker, MemoryBacklog
from ._errors import DeliveryError, ValidationError
from ._payload import EVENTS_PATH, USERS_PATH, Payload
from ._report import ReportUnsent
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
FILE_MODE = 0o600  # the database (SQLite gives -wal and -shm its mode) and the lock files
DIR_MODE = 0o700  # the .owners directory

# The times a row may hold: what createdAt can say with a four-digit year, in epoch seconds
# (0001-01-01 to 9999-12-31T23:59:59Z). Anything else (NaN, inf, 1e20) is a corrupt row.
EARLIEST_CREATED = -62135596800.0
LATEST_CREATED = 253402300799.0
_USABLE_ROW = (
    "(typeof(created) IN ('integer', 'real') AND created BETWEEN ? AND ?"
    " AND path IN (?, ?) AND typeof(body) = 'blob')"
)
_USABLE_ROW_ARGS = (EARLIEST_CREATED, LATEST_CREATED, USERS_PATH, EVENTS_PATH)

# What the disk or SQLite may raise at any moment (full, read-only, locked, removed).
_FAILURES = (sqlite3.Error, OSError)

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



def check_outbox(path: str) -> None:
    """Raise ValidationError unless an outbox can be kept at ``path``: its directory exists, the
    ``.owners`` directory and a lock file in it can be made and locked, and the database can be
    opened and written. Run when the handler is built, so a misconfigured outbox fails there
    rather than in a sender thread; it creates the files (private, see FILE_MODE)."""
    if not HAVE_FCNTL:  # pragma: no cover - Windows
        raise ValidationError(
            "outbox", path, "a platform with POSIX file locks (fcntl: Linux, macOS)", shown=True
        )
    full = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(full)):
        raise ValidationError("outbox", path, "a file path in an existing directory", shown=True)
    owners_dir = full + ".owners"
    step = f"make the directory {owners_dir}"
    try:
        _make_private_dir(owners_dir)
        step = f"create and lock a file in {owners_dir}"
        probe = os.path.join(owners_dir, f"probe-{secrets.token_hex(8)}.lock")
        with _create_private(probe, os.O_RDWR) as lock:
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                _remove(probe)
        step = f"open and write the database {full}"
        db = _connect(full)
        try:
            with _transaction(db):
                db.execute("UPDATE totals SET bytes = bytes")  # a real write, to prove we may
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if not isinstance(exc, sqlite3.OperationalError):  # "file is not a database" and such
            raise ValidationError(
                "outbox", path, f"an interakt-logging outbox file, or a new path ({exc})",
                shown=True,
            ) from None
        cause = str(exc)
    except OSError as exc:
        cause = exc.strerror or str(exc)
    else:
        return
    raise ValidationError("outbox", path, f"a path where an outbox can be kept and written "
                          f"(could not {step}: {cause})", shown=True)


class _Written(NamedTuple):
    """What ``_write`` did with a batch: rows ``kept``, and payloads ``not_kept`` (no room)."""

    kept: List[Payload]
    not_kept: List[Payload]


class OutboxBacklog(MemoryBacklog):
    """The backlog on disk. ``max_bytes`` bounds the payload bytes the file holds (all owners
    together); what does not fit is returned by ``put_batch`` and ``keep_or_return`` and
    reported. What the disk refuses, and rows that cannot be stored or read back, go to
    ``report_unsent``."""

    def __init__(
        self,
        path: str,
        *,
        room: int,
        max_bytes: int,
        counters: Counters,
        report_unsent: ReportUnsent,
    ) -> None:
        super().__init__(room)
        self.path = os.path.abspath(path)
        self._owners_dir = self.path + ".owners"
        self._max_bytes = max_bytes
        self._counters = counters
        self._report_unsent = report_unsent
        self._pid = os.getpid()
        self._db: Optional[sqlite3.Connection] = None
        self._owner: Optional[str] = None
        self._owner_lock: Optional[IO[bytes]] = None
        self._rows = 0  # rows of this owner in the file: in memory (waiting, in flight) or not
        self._cursor = 0  # every row of this owner with id <= _cursor is in memory or finished
        self._next_adoption = 0.0
        self._closed = False
        self._file_id: Optional[Tuple[int, int]] = None  # (device, inode) of the file we opened
        self._deleted = False  # that file is no longer at self.path: nothing in it will last
        self._warned: Set[str] = set()
        self._failed: List[Tuple[Exception, Any]] = []  # found under the lock, reported after
        self._undeleted: Set[int] = set()  # rows finished here whose delete failed: retried
        self._leftovers = self._peek()
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
        """Write the batch in one transaction; the rows' ids become the payloads' seq. When the
        disk refuses the batch, its payloads are reported here, with the cause."""
        with self._lock:
            self._check_file()
            try:
                kept, not_kept = self._write(payloads)
            except _FAILURES as exc:
                self._warn(exc)
                error = DeliveryError(
                    f"could not write to the outbox {self.path} ({exc}); payload dropped",
                    "outbox",
                )
                self._failed.extend((error, payload.on_error_arg()) for payload in payloads)
                self._tally[1] += len(payloads)  # the next flush's outcomes, as _not_kept's
                kept, not_kept = [], []
            if kept and not self._stopping:
                if self._unloaded() == len(kept) and len(self._waiting) < self._room:
                    self._waiting.extend(kept)  # nothing older on disk only: skip the reread
                    self._cursor = cast(int, kept[-1].outbox_id)
                else:
                    self._refill_or_warn()
                self._has_work.notify(len(kept))
        self._report_failed()
        return not_kept

    def add_marker(self, marker: FlushMarker) -> None:
        with self._lock:
            try:
                self._conn()  # so the rows adopted at open count for this flush
            except _FAILURES as exc:
                self._warn(exc)
        super().add_marker(marker)

    def keep_or_return(self, payloads: List[Payload]) -> List[Payload]:
        """At shutdown: write what is not on disk yet (still queued); return what did not fit
        (or what the disk refused)."""
        with self._lock:
            self._check_file()
            lost = self._all_unfinished(payloads) if self._deleted else None
        if lost is not None:
            self._report_failed()
            return lost
        fresh = [payload for payload in payloads if payload.outbox_id is None]
        if not fresh:
            return []
        with self._lock:
            try:
                not_kept = self._write(fresh).not_kept
            except _FAILURES as exc:
                self._warn(exc)
                not_kept = fresh
        self._report_failed()
        return not_kept

    # -- the workers' side ----------------------------------------------------------------------

    def take(self, timeout: float) -> Optional[Payload]:
        with self._lock:
            if not self._stopping:
                try:
                    self._conn()
                    if time.monotonic() >= self._next_adoption:
                        self._adopt()
                except _FAILURES as exc:
                    self._warn(exc)
                self._refill_or_warn()
        if self._failed:
            self._report_failed()
        return super().take(timeout)

    def finish(self, payload: Payload, delivered: bool) -> bool:
        """Delete the row. Also when shutdown already took the payload over but it was just
        delivered: keeping it would send it twice."""
        with self._lock:
            tracked = id(payload) in self._in_flight
            if tracked or (delivered and not self._closed):
                # Finished here whether or not the delete works now: a row that stayed would
                # hold up every flush. Its delete is retried with the next one, and at close.
                self._rows -= 1
                self._undeleted.add(cast(int, payload.outbox_id))
                try:
                    self._delete_finished(self._conn())
                except _FAILURES as exc:
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
                    self._delete_finished(db)
                    if not db.execute(
                        "SELECT 1 FROM outbox WHERE owner = ? LIMIT 1", (self._owner,)
                    ).fetchone():
                        db.execute("DELETE FROM owners WHERE owner = ?", (self._owner,))
                except _FAILURES as exc:
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
        with contextlib.suppress(OSError):
            opened = os.stat(self.path)
            self._file_id = (opened.st_dev, opened.st_ino)
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
        _make_private_dir(self._owners_dir)
        lock = _create_private(self._lock_path(token), os.O_WRONLY)  # held for life
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(b"%d\n" % os.getpid())
            db.execute("INSERT INTO owners VALUES (?, ?, ?)", (token, os.getpid(), time.time()))
        except BaseException:
            _remove(self._lock_path(token))
            lock.close()
            raise
        self._owner, self._owner_lock = token, lock

    def _delete_finished(self, db: sqlite3.Connection) -> None:
        """Delete the rows of the payloads finished here (lock held)."""
        for row_id in sorted(self._undeleted):
            db.execute("DELETE FROM outbox WHERE id = ? AND owner = ?", (row_id, self._owner))
            self._undeleted.discard(row_id)

    def _lock_path(self, owner: str) -> str:
        return os.path.join(self._owners_dir, owner + ".lock")

    def _write(self, payloads: List[Payload]) -> _Written:
        """Insert what fits under max_bytes in one transaction; returns what was kept and what
        did not fit. A payload whose row cannot be stored fails alone: it goes to ``_failed``,
        once the transaction holds (when the disk refuses it, the caller reports the whole
        batch, that payload included, once)."""
        db = self._conn()
        rows: List[Tuple[Payload, int]] = []
        not_kept: List[Payload] = []
        failed_alone: List[Tuple[Exception, Dict[str, Any]]] = []
        with _transaction(db):
            (total,) = db.execute("SELECT bytes FROM totals").fetchone()
            for payload in payloads:
                size = len(payload.path) + len(payload.body) + ROW_OVERHEAD
                if total + size > self._max_bytes:
                    not_kept.append(payload)
                    continue
                unusable = _unusable(payload.path, payload.body, payload.created)
                if unusable is not None:
                    failed_alone.append(
                        (unusable, _on_error_arg(payload.path, payload.body, payload.created))
                    )
                    continue
                try:
                    cursor = db.execute(
                        _INSERT, (self._owner, payload.path, payload.body, payload.created, size)
                    )
                except (sqlite3.IntegrityError, sqlite3.InterfaceError, OverflowError) as exc:
                    # SQLite undid this statement only; the transaction goes on without it.
                    error = DeliveryError(f"the outbox could not store this payload ({exc}); "
                                          "payload dropped", "outbox")
                    failed_alone.append((error, payload.on_error_arg()))
                    continue
                total += size
                rows.append((payload, cast(int, cursor.lastrowid)))
        for failure, on_error_arg in failed_alone:
            self._fail_fresh(failure, on_error_arg)
        for payload, row_id in rows:
            payload.seq = payload.outbox_id = row_id
        if rows:
            self._rows += len(rows)
            self._last_seq = rows[-1][1]
            self._counters.add("outboxed", len(rows))
        return _Written([payload for payload, _ in rows], not_kept)

    def _check_file(self) -> None:
        """Notice, once, that the file this process writes to was deleted or replaced: SQLite
        goes on writing to the deleted file, which vanishes with the process."""
        if self._file_id is None or self._deleted:
            return
        try:
            now = os.stat(self.path)
            still = (now.st_dev, now.st_ino) == self._file_id
        except OSError:
            still = False
        if not still:
            self._deleted = True
            logger.warning(
                "interakt-logging: the outbox %s was deleted or replaced while in use; this "
                "process goes on delivering from the deleted file, and reports what is left "
                "in it at exit as lost", self.path,
            )

    def _all_unfinished(self, payloads: List[Payload]) -> List[Payload]:
        """At shutdown, once the file is gone: nothing can be kept. ``payloads``, and the rows of
        this owner that only the deleted file holds (never loaded: past ``_cursor``), for the
        caller to report as lost."""
        try:
            rows = self._conn().execute(
                "SELECT id, path, body, created FROM outbox WHERE owner = ? AND id > ?"
                " ORDER BY id", (self._owner, self._cursor),
            ).fetchall()
        except _FAILURES as exc:
            self._warn(exc)
            rows = []
        lost = list(payloads)
        for row_id, path, body, created in rows:
            self._cursor = row_id  # handed over: a second call does not return it again
            unusable = _unusable(path, body, created)
            if unusable is None:
                lost.append(Payload(path, bytes(body), created))
            else:
                self._failed.append((unusable, _on_error_arg(path, body, created)))
        self._rows = len(self._in_flight)  # none left to count as kept
        return lost

    def _fail_fresh(self, error: Exception, on_error_arg: Dict[str, Any]) -> None:
        """A payload just drained from the queue that cannot be stored: reported once the lock
        is released, and one of the next flush's failures."""
        self._failed.append((error, on_error_arg))
        self._tally[1] += 1

    def _unloaded(self) -> int:
        """Rows of this owner that are only on disk."""
        return self._rows - len(self._waiting) - len(self._in_flight)

    def _refill_or_warn(self) -> None:
        try:
            self._refill()
        except _FAILURES as exc:
            self._warn(exc)
        if self._markers:  # corrupt rows dropped may have been all a flush waited for
            self._release_markers()

    def _refill(self) -> None:
        """Top the in-memory window up from disk, oldest rows first. A row that cannot be sent
        (a corrupt time, path or body) is deleted and reported, never handed to a worker."""
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
            unusable = _unusable(path, body, created)
            if unusable is not None:
                self._rows -= self._conn().execute(
                    "DELETE FROM outbox WHERE id = ?", (row_id,)
                ).rowcount
                self._failed.append((unusable, _on_error_arg(path, body, created)))
                self._finished += 1
                self._count(row_id, delivered=False)
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
        claimed = _settle_gone_owners(db, self._owners_dir, heir=self._owner)
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
        except _FAILURES:
            return 0  # unknown: hold the markers (shutdown releases them)
        return oldest

    def _peek(self) -> bool:
        """At construction: does the file hold rows of owners that are gone?"""
        try:
            db = _connect(self.path)
            try:
                return any(
                    db.execute("SELECT 1 FROM outbox WHERE owner = ? LIMIT 1", (owner,)).fetchone()
                    for owner, _ in _gone_owners(db, self._owners_dir)
                )
            finally:
                db.close()
        except _FAILURES as exc:
            self._warn(exc)
            return False

    def _suspend(self) -> None:
        """Before a fork: close the connection (reopened on next use)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _report_failed(self) -> None:
        """Report what the last operation could not store or read back. Called without the
        lock: on_error may call back into the handler (flush, close)."""
        with self._lock:
            failed, self._failed = self._failed, []
        for error, on_error_arg in failed:
            self._report_unsent(error, on_error_arg)

    def _warn(self, exc: Exception) -> None:
        message = str(exc)
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(
                "interakt-logging: outbox %s: %s (further occurrences are not logged)",
                self.path, message,
            )


def _unusable(path: Any, body: Any, created: Any) -> Optional[ValidationError]:
    """Why a row with these values could not be sent, or None. The validation at the call
    refuses such values already; the outbox does not trust its input nor its file."""
    if path not in (USERS_PATH, EVENTS_PATH):
        return ValidationError("path", path, f"{USERS_PATH!r} or {EVENTS_PATH!r}")
    if not isinstance(body, bytes):
        return ValidationError("body", body, "the JSON body as bytes")
    if (
        not isinstance(created, (int, float)) or isinstance(created, bool)
        or not EARLIEST_CREATED <= created <= LATEST_CREATED
    ):
        return ValidationError(
            "created_at", created, "epoch seconds from year 1 to 9999 (a finite number)"
        )
    return None


def _on_error_arg(path: Any, body: Any, created: Any) -> Dict[str, Any]:
    """What on_error receives for a row that cannot be sent: ``{"path", "body"}`` as for any
    payload (the body decoded when it can be), and the unusable time as ``created``."""
    decoded: Any = body
    with contextlib.suppress(Exception):
        decoded = orjson.loads(body)
    return {"path": path, "body": decoded, "created": created}


# -- the file: creating it privately, connecting, transactions, owners -------------------------


def _make_private_dir(path: str) -> None:
    """Make ``path`` a directory (mode DIR_MODE whatever the umask) unless it is one already;
    NotADirectoryError when something else is in the way."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        return
    os.chmod(path, DIR_MODE)  # the umask may have taken bits away; set exactly


def _create_private(path: str, flags: int) -> IO[bytes]:
    """Create ``path`` (it must not exist) with mode FILE_MODE whatever the umask, open."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return open(fd, "r+b" if flags & os.O_RDWR else "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _connect(path: str) -> sqlite3.Connection:
    """Open (creating it private when missing) the outbox file, in WAL mode, with its schema."""
    with contextlib.suppress(FileExistsError):
        _create_private(path, os.O_WRONLY).close()  # SQLite gives -wal and -shm this mode
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


def _settle_gone_owners(db: sqlite3.Connection, owners_dir: str, heir: Optional[str]) -> int:
    """Settle the rows of every owner that is gone, one transaction per owner: hand them to
    ``heir`` (adoption) or, without one, delete them (purge); then forget the owner. Rows whose
    owner is not registered at all (its entry removed by hand) are settled the same way.
    Returns how many rows were settled."""

    def settle(where: str, args: Tuple[str, ...]) -> int:
        if heir is None:
            return db.execute(f"DELETE FROM outbox WHERE {where}", args).rowcount
        return db.execute(f"UPDATE outbox SET owner = ? WHERE {where}", (heir, *args)).rowcount

    settled = 0
    for owner, lock_path in _gone_owners(db, owners_dir):
        with _transaction(db):
            settled += settle("owner = ?", (owner,))
            db.execute("DELETE FROM owners WHERE owner = ?", (owner,))
        _remove(lock_path)
    with _transaction(db):
        settled += settle("owner NOT IN (SELECT owner FROM owners)", ())
    return settled


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# -- the command line's view of a file -----------------------------------------------------------


@dataclass(frozen=True)
class OutboxCensus:
    """What an outbox file holds, and whose it is: rows of running processes are theirs to
    send; rows of ended ones (``left``) wait for the next process that opens the file."""

    users: int
    events: int
    size: int  # bytes, as counted against outbox_max_bytes
    oldest: Optional[float]  # epoch seconds of the oldest payload that can be sent
    left: int  # rows of processes that ended
    held: int  # rows of running processes
    running: Tuple[int, ...]  # pids of the running processes that have the file open
    unusable: int  # corrupt rows (a time, path or body that cannot be sent): reported, dropped

    @property
    def total(self) -> int:
        return self.users + self.events


def census(path: str) -> OutboxCensus:
    """Read what the outbox at ``path`` holds, without writing to it. ValidationError when
    there is no outbox file there."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise ValidationError("outbox", path, "an existing outbox file", shown=True)
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(full)}?mode=ro", uri=True)
        try:
            groups = db.execute(
                f"SELECT owner, path = ?, COUNT(*), SUM(size),"
                f" MIN(CASE WHEN {_USABLE_ROW} THEN created END), SUM(NOT {_USABLE_ROW})"
                " FROM outbox GROUP BY owner, path = ?",
                (USERS_PATH, *_USABLE_ROW_ARGS, *_USABLE_ROW_ARGS, USERS_PATH),
            ).fetchall()
            pids = dict(db.execute("SELECT owner, pid FROM owners").fetchall())
            gone = {owner for owner, _ in _gone_owners(db, full + ".owners")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ValidationError(
            "outbox", path, f"an interakt-logging outbox file ({exc})", shown=True
        ) from None
    users = events = size = left = held = unusable = 0
    oldest: Optional[float] = None
    for owner, is_user, count, group_size, group_oldest, group_unusable in groups:
        if is_user:
            users += count
        else:
            events += count
        size += group_size or 0
        unusable += group_unusable or 0
        if group_oldest is not None:
            oldest = group_oldest if oldest is None else min(oldest, group_oldest)
        if owner in gone or owner not in pids:
            left += count
        else:
            held += count
    running = tuple(sorted(pid for owner, pid in pids.items() if owner not in gone))
    return OutboxCensus(users, events, size, oldest, left, held, running, unusable)


def purge(path: str) -> int:
    """Delete the rows that ended processes left in the outbox at ``path`` (a running
    process's rows stay); returns how many were deleted."""
    full = os.path.abspath(path)
    db = _connect(full)
    try:
        return _settle_gone_owners(db, full + ".owners", heir=None)
    finally:
        db.close()


# -- fork ------------------------------------------------------------------------------------------
# ``_lifecycle`` calls these from its at-fork hooks. Every open outbox of this process is in
# _live; a fork waits until none is in the middle of a statement (by taking their locks), closes
# their connections, and in the child keeps the parent's objects referenced for good, so nothing
# ever closes them there.
_live: weakref.WeakSet[OutboxBacklog] = weakref.WeakSet()
_forking: List[OutboxBacklog] = []
_inherited: List[OutboxBacklog] = []


def before_fork() -> None:
    pid = os.getpid()
    for backlog in list(_live):
        if backlog._pid == pid:
            backlog._lock.acquire()
            _forking.append(backlog)
            backlog._suspend()


def after_fork_in_parent() -> None:
    for backlog in _forking:
        backlog._lock.release()
    _forking.clear()


def after_fork_in_child() -> None:
    _inherited.extend(_forking)
    after_fork_in_parent()  # the child's copies of the locks, so a stray call cannot hang
