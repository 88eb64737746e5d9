"""A real Track API look-alike on loopback, for tests (re-exported by ``interakt_logging.testing``).

``MockInteraktServer`` is an HTTP server on 127.0.0.1 that answers like the Track API and
records every request (path, headers, parsed JSON body). Latency, status codes, Retry-After and
silent hangs can be injected, globally or per request, to test retries and shutdown for real.
"""

from __future__ import annotations

import collections
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Union

import orjson

__all__ = ["MockInteraktServer", "RecordedRequest", "Reply"]


@dataclass
class RecordedRequest:
    """One request as the server saw it, and what it answered: ``status`` once chosen,
    ``answered`` once the whole answer was sent (not cut, nor left dripping)."""

    method: str
    path: str
    headers: Dict[str, str]
    body: Any
    raw: bytes
    status: int = 0
    received_at: float = field(default_factory=time.time)
    answered: bool = False

    @property
    def ok(self) -> bool:
        """A 2xx the client got whole: what it counts as delivered."""
        return self.answered and 200 <= self.status < 300


@dataclass
class Reply:
    """What to answer one request with. ``hang``: never answer; ``cut``: send the status, the
    headers and half the body, then close the connection (a reset in mid-answer); ``drip``:
    send the answer one byte every ``drip`` seconds (only its body when ``drip_headers`` is
    False), a server slow enough to never trip a socket timeout; ``location``: a Location
    header (for a redirect such as ``Reply(302, location=...)``)."""

    status: int = 200
    body: Any = None
    retry_after: Optional[str] = None
    latency: float = 0.0
    hang: bool = False
    cut: bool = False
    drip: float = 0.0
    drip_headers: bool = True
    location: Optional[str] = None


Responder = Callable[[RecordedRequest], Optional[Reply]]


class MockInteraktServer:
    """A loopback Track API. Use as a context manager; ``url`` is the host to configure.

    - ``latency``: seconds to wait before every answer (e.g. 0.02 for a realistic round trip).
    - ``script(*replies)``: answer the next requests with these replies, in order.
    - ``responder``: a callable(request) -> Reply or None, consulted for every request (for
      random fault injection); None falls back to the script, then to 200.
    - ``hang = True``: accept requests and never answer (until the server stops).
    - ``on_request``: a callable(request) called after each answer, on the server's thread
      (``interakt-logging mock-server`` prints requests with it).
    - ``rate_limit``: the account's limit, for all clients together: at most this many requests
      are accepted in any ``rate_window`` seconds; the others are answered 429 with Interakt's
      message, and a Retry-After header only when ``rate_limit_retry_after`` is set. Requests
      the responder or the script answer do not count.
    """

    def __init__(
        self,
        latency: float = 0.0,
        responder: Optional[Responder] = None,
        port: int = 0,
        host: str = "127.0.0.1",
        on_request: Optional[Callable[[RecordedRequest], None]] = None,
        rate_limit: Optional[float] = None,
        rate_window: float = 1.0,
        rate_limit_retry_after: Optional[str] = None,
    ) -> None:
        self.latency = latency
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.rate_limit_retry_after = rate_limit_retry_after
        self._admitted: Deque[float] = collections.deque()  # when accepted requests arrived
        self.responder = responder
        self.on_request = on_request
        self.hang = False
        self.requests: List[RecordedRequest] = []
        self._delivered_count = 0
        self._script: List[Reply] = []
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._host = host
        self._server = _Server((host, port), _make_handler(self))
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        port: int = self._server.server_address[1]
        return f"http://{self._host}:{port}"

    def __enter__(self) -> MockInteraktServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # stop() waits for serve_forever's next poll: 5 ms, not 50, keeps a test's teardown short
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.005},
            name="mock-interakt-server", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port; also for a server never started (whose
        ``shutdown`` would wait for ever for a loop that never ran)."""
        self._stopped.set()
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def script(self, *replies: Union[Reply, int]) -> None:
        """Answer the next requests with these replies (a bare int is a status code)."""
        with self._cond:
            self._script.extend(Reply(r) if isinstance(r, int) else r for r in replies)

    # -- reading what arrived ---------------------------------------------------------------

    @property
    def delivered(self) -> List[RecordedRequest]:
        """The requests answered with a 2xx, sent whole (a cut answer was not delivered)."""
        with self._cond:
            return [r for r in self.requests if r.ok]

    def events(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Bodies of delivered event calls, optionally only those named ``name``."""
        return [
            r.body for r in self.delivered
            if r.path.endswith("/events/") and (name is None or r.body.get("event") == name)
        ]

    def users(self, user_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Bodies of delivered user calls, optionally only those for ``user_id``."""
        return [
            r.body for r in self.delivered
            if r.path.endswith("/users/") and (user_id is None or r.body.get("userId") == user_id)
        ]

    @property
    def throttled(self) -> List[RecordedRequest]:
        """The requests answered 429."""
        with self._cond:
            return [r for r in self.requests if r.status == 429]

    def wait_for(self, count: int, timeout: float = 30.0) -> List[RecordedRequest]:
        """Wait until ``count`` requests were answered with a 2xx (sent whole); AssertionError
        otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._delivered_count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} delivered requests within {timeout}s, got "
                        f"{self._delivered_count} (of {len(self.requests)} received)"
                    )
                self._cond.wait(remaining)
            return [r for r in self.requests if r.ok]

    # -- serving ------------------------------------------------------------------------------

    def _reply_for(self, request: RecordedRequest) -> Reply:
        reply = self.responder(request) if self.responder is not None else None
        if reply is None:
            with self._cond:
                if self._script:
                    reply = self._script.pop(0)
        if reply is None and self.rate_limit is not None and not self._admit():
            reply = Reply(429, retry_after=self.rate_limit_retry_after)
        if reply is None:
            reply = Reply(hang=self.hang)
        return reply

    def _admit(self) -> bool:
        """The account-wide sliding window: True when this request fits in it."""
        assert self.rate_limit is not None
        now = time.monotonic()
        with self._cond:
            admitted = self._admitted
            while admitted and admitted[0] <= now - self.rate_window:
                admitted.popleft()
            if len(admitted) >= self.rate_limit * self.rate_window:
                return False
            admitted.append(now)
            return True

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(request)

    def _answered(self, request: RecordedRequest) -> None:
        with self._cond:
            if request.ok:
                self._delivered_count += 1
            self._cond.notify_all()
        if self.on_request is not None:
            self.on_request(request)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _make_handler(mock: MockInteraktServer) -> type:
    class Handler(socketserver.StreamRequestHandler):
        """A minimal HTTP/1.1 keep-alive server: request line, headers, Content-Length body.
        Lean on purpose: http.server's email-based header parsing would cost more CPU than
        the client under test, in the same process."""

        disable_nagle_algorithm = True

        def handle(self) -> None:
            while not mock._stopped.is_set():
                line = self.rfile.readline(65537)
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    continue
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    return
                headers: Dict[str, str] = {}
                lowered: Dict[str, str] = {}
                while True:
                    header = self.rfile.readline(65537)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip()] = value.strip()
                    lowered[name.strip().lower()] = value.strip()
                length = int(lowered.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self._answer(parts[0], parts[1], headers, raw):
                    return
                if lowered.get("connection", "").lower() == "close":
                    return

        def _answer(self, method: str, path: str, headers: Dict[str, str], raw: bytes) -> bool:
            try:
                body: Any = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = None
            request = RecordedRequest(method, path, headers, body, raw)
            mock._record(request)
            reply = mock._reply_for(request)
            if reply.hang:
                mock._stopped.wait()
                return False
            delay = reply.latency or mock.latency
            if delay:
                time.sleep(delay)
            with mock._cond:
                request.status = reply.status
            answer = reply.body
            if answer is None:
                ok = 200 <= reply.status < 300
                answer = {"result": ok, "message": "Accepted" if ok else _message(reply.status)}
            data = answer if isinstance(answer, bytes) else orjson.dumps(answer)
            head = (
                f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            )
            if reply.retry_after is not None:
                head += f"Retry-After: {reply.retry_after}\r\n"
            if reply.location is not None:
                head += f"Location: {reply.location}\r\n"
            if reply.cut:
                self.wfile.write(head.encode("latin-1") + b"\r\n" + data[: len(data) // 2])
                return False
            whole = head.encode("latin-1") + b"\r\n" + data
            if reply.drip:
                sent = self._drip(request, whole, reply.drip, reply.drip_headers)
            else:
                sent = self._send_last(request, whole)
            if sent:
                mock._answered(request)
            return sent

        def _send_last(self, request: RecordedRequest, data: bytes) -> bool:
            """Send what completes the answer. ``answered`` is set first: the client may act
            on the answer (a flush returns) before this thread runs again."""
            with mock._cond:
                request.answered = True
            try:
                self.wfile.write(data)
            except OSError:  # the client gave up and closed the connection
                with mock._cond:
                    request.answered = False
                return False
            return True

        def _drip(
            self, request: RecordedRequest, whole: bytes, interval: float, headers_too: bool
        ) -> bool:
            """Send ``whole`` a byte every ``interval`` s (the head at once unless
            ``headers_too``); False when the client left or the server stops first."""
            start = 0 if headers_too else whole.index(b"\r\n\r\n") + 4
            try:
                self.wfile.write(whole[:start])
                for i in range(start, len(whole) - 1):
                    if mock._stopped.wait(interval):
                        return False
                    self.wfile.write(whole[i : i + 1])
            except OSError:  # the client gave up and closed the connection
                return False
            return not mock._stopped.wait(interval) and self._send_last(request, whole[-1:])

    return Handler


def _message(status: int) -> str:
    if status == 429:
        return "Rate limit exceeded for this resource"
    if status == 401:
        return "Unauthorized"
    if status >= 500:
        return "Internal server error"
    return "Bad request"
