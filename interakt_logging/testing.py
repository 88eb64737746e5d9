"""Test helpers: a real Track API look-alike on loopback.

``MockInteraktServer`` is an HTTP server on 127.0.0.1 that answers like the Track API and
records every request (path, headers, parsed JSON body). Latency, status codes, Retry-After and
silent hangs can be injected, globally or per request, to test retries and shutdown for real.

``capture()`` is the lighter tool for unit tests: while it is active, every payload any
InteraktHandler, structlog processor or ``track`` call would send is recorded instead, with no
network and no API key. The pytest fixture ``interakt_capture`` wraps it.

``wait_until()`` waits, with a deadline, for a state no event announces (a breaker's state,
rows in an outbox file), instead of a bare sleep.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Union, overload

import orjson

from . import _pipeline
from ._mock_server import MockInteraktServer, RecordedRequest, Reply
from ._payload import EVENTS_PATH, Payload
from ._redis_server import redis_server

__all__ = [
    "Captured",
    "CapturedCall",
    "MockInteraktServer",
    "RecordedRequest",
    "Reply",
    "capture",
    "redis_server",
    "wait_until",
]


@dataclass(frozen=True)
class CapturedCall:
    """One intercepted call: the API path and the JSON body exactly as it would be POSTed."""

    path: str
    body: Dict[str, Any]

    @property
    def kind(self) -> str:
        """``"event"`` or ``"user"``."""
        return "event" if self.path == EVENTS_PATH else "user"

    @property
    def name(self) -> Optional[str]:
        """The event name; None for a user call."""
        name: Optional[str] = self.body.get("event")
        return name

    @property
    def user_id(self) -> Optional[str]:
        user_id: Optional[str] = self.body.get("userId")
        return user_id

    @property
    def traits(self) -> Dict[str, Any]:
        traits: Dict[str, Any] = self.body["traits"]
        return traits


class Captured(Sequence[CapturedCall]):
    """The calls intercepted by one ``capture()``, in the order they were made (a read-only
    list of ``CapturedCall``). Safe to read while other threads are still logging."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: List[CapturedCall] = []

    def _intercept(self, payload: Payload) -> None:
        call = CapturedCall(payload.path, orjson.loads(payload.wire_body()))
        with self._lock:
            self._calls.append(call)

    def _snapshot(self) -> List[CapturedCall]:
        with self._lock:
            return list(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    @overload
    def __getitem__(self, index: int) -> CapturedCall: ...

    @overload
    def __getitem__(self, index: slice) -> List[CapturedCall]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[CapturedCall, List[CapturedCall]]:
        return self._snapshot()[index]

    def __iter__(self) -> Iterator[CapturedCall]:
        return iter(self._snapshot())

    def __repr__(self) -> str:
        return f"Captured({self._snapshot()!r})"

    def events(self, name: Optional[str] = None) -> List[CapturedCall]:
        """Event calls, optionally only those named ``name``."""
        return [
            c for c in self._snapshot()
            if c.kind == "event" and (name is None or c.name == name)
        ]

    def users(self, user_id: Union[str, int, None] = None) -> List[CapturedCall]:
        """User calls, optionally only those for ``user_id``."""
        wanted = None if user_id is None else str(user_id)
        return [
            c for c in self._snapshot()
            if c.kind == "user" and (wanted is None or c.user_id == wanted)
        ]

    def clear(self) -> None:
        """Forget what was captured so far (capturing goes on)."""
        with self._lock:
            self._calls.clear()


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Record every payload that would be sent while the block runs, instead of sending it.

    Covers every InteraktHandler (background and sync mode), the structlog processor and the
    ``track`` module, on every thread; validation still runs, so bad input is reported as usual.
    No API key is needed: a handler built while a capture is active and no key is configured
    gets a placeholder key (it is never sent anywhere while the capture lasts). In sync mode a
    call answers ``{"result": True, ...}``. Payloads queued before the block are still sent.

    Thread-safe: payloads are recorded under a lock, from whichever thread logs them. Captures
    nest: each one records what is sent during its own block. On exit the interceptor is removed
    (also when the block raises), so sending resumes as before.
    """
    captured = Captured()
    intercept = captured._intercept
    _pipeline.add_interceptor(intercept)
    try:
        yield captured
    finally:
        _pipeline.remove_interceptor(intercept)


def wait_until(
    condition: Callable[[], bool], what: Callable[[], str], timeout: float = 20.0
) -> None:
    """Wait until ``condition()`` holds, for states no event announces (a breaker's state, rows
    in an SQLite file): checked every 20 ms, AssertionError with ``what()`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: its wait() is an interruptible pause
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(what())
        tick.wait(0.02)
