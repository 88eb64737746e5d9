"""A deadline per HTTP attempt, so ``timeout`` bounds connect, send, headers and body together.

A socket timeout bounds one socket operation, not the request: a server that sends one byte every
half second never trips it, and holds a worker for ever. urllib3's ``Timeout(total=)`` does not
help: it only sets the read timeout to what the connect left, and that still applies to each read
on its own. So each attempt registers a deadline with a ``Watchdog`` (one thread per transport,
asleep until the earliest deadline), and the connection it runs on registers its socket; when the
deadline passes, the watchdog shuts the socket down, the blocked read returns at once, and the
attempt fails as a network error. requests' pooling stays: ``WatchedAdapter`` is requests'
HTTPAdapter whose pools build connections that register their socket with the attempt running on
the current thread, when they connect and each time they send.

Not bounded: resolving the host name (``getaddrinfo`` cannot be interrupted; the system resolver
has its own timeouts). An attempt whose deadline passed meanwhile ends as soon as it has a socket.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, List, Optional

from requests.adapters import HTTPAdapter
from urllib3 import ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()  # .attempt: the Attempt running on this thread, if any


class Attempt:
    """One request's deadline and the sockets it runs on. ``expired`` once the watchdog ended
    it; ``owned`` sockets are extra descriptors the attempt closes when it is over."""

    __slots__ = ("deadline", "expired", "owned", "sockets", "watchdog")

    def __init__(self, watchdog: Watchdog, deadline: float) -> None:
        self.watchdog = watchdog
        self.deadline = deadline
        self.expired = False
        self.sockets: List[socket.socket] = []
        self.owned: List[socket.socket] = []


class Watchdog:
    """Ends the attempts that outlive their deadline by shutting their sockets down. Its daemon
    thread starts on first use (never in a forked child's copy: transports are rebuilt there)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._attempts: List[Attempt] = []  # in flight: at most one per worker, so a list
        self._thread: Optional[threading.Thread] = None
        self._wake_at: Optional[float] = None  # when the thread wakes next; None: when told
        self._closed = False

    def begin(self, seconds: float) -> Attempt:
        """Start an attempt on this thread that must be over within ``seconds``."""
        attempt = Attempt(self, time.monotonic() + seconds)
        with self._cond:
            self._attempts.append(attempt)
            if self._wake_at is None or attempt.deadline < self._wake_at:
                # Rare: deadlines come in start order (one timeout per transport), so the
                # thread is already due to wake before this one, except when idle.
                self._cond.notify()
                if not self._closed and (self._thread is None or not self._thread.is_alive()):
                    self._start()
        _current.attempt = attempt
        return attempt

    def end(self, attempt: Attempt) -> bool:
        """The attempt is over (answered or failed); True when its deadline ended it."""
        _current.attempt = None
        with self._cond:
            if not attempt.expired:
                self._attempts.remove(attempt)
            owned, attempt.owned = attempt.owned, []
        for sock in owned:
            sock.close()
        return attempt.expired

    def watch(self, attempt: Attempt, sock: socket.socket, owned: bool) -> None:
        with self._cond:
            attempt.sockets.append(sock)
            if owned:
                attempt.owned.append(sock)
            if attempt.expired:
                _shut_down(sock)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="interakt-logging-watchdog", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: each socket operation stays bounded
            return
        self._thread = thread

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for attempt in [a for a in self._attempts if a.deadline <= now]:
                    self._attempts.remove(attempt)
                    attempt.expired = True
                    for sock in attempt.sockets:
                        _shut_down(sock)
                if self._attempts:
                    self._wake_at = min(a.deadline for a in self._attempts)
                    self._cond.wait(self._wake_at - now)
                else:
                    self._wake_at = None
                    self._cond.wait()


def _shut_down(sock: socket.socket) -> None:
    """End every transfer on ``sock``: a read blocked in another thread returns at once. The
    plain socket's method, also for TLS: SSLSocket.shutdown would drop its state under that
    reader."""
    with contextlib.suppress(OSError):  # closed already
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watch(sock: socket.socket, owned: bool) -> None:
    attempt: Optional[Attempt] = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.watchdog.watch(attempt, sock, owned)
    elif owned:
        sock.close()


class _WatchedHTTPConnection(HTTPConnection):
    """Registers its socket with the attempt on this thread: a new one as soon as it is
    connected (a second descriptor, which stays valid while TLS wraps and detaches the first),
    a pooled one each time a request is sent on it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock.dup(), owned=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            _watch(self.sock, owned=False)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class WatchedAdapter(HTTPAdapter):
    """requests' HTTPAdapter (pooling, proxies, TLS) whose connections a Watchdog can end."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # not SOCKS: it has connection classes of its own
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager
