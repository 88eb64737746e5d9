"""HTTP to the Track API: one pooled ``requests.Session``, prepared headers, typed errors.

Each POST reuses a prepared request per path and hands it to the adapter directly, skipping the
per-call environment merge, cookie jar and auth preparation of ``Session.post``; proxies from
the environment are resolved once at construction, so an HTTPS_PROXY setup still applies.
``timeout`` bounds each attempt as a whole (``_deadline``), not each socket read.

Redirects are not followed: a Track API call is delivered only when the API itself accepted the
POST with its body (requests would replay a 302 as a GET without it, and the target's 200 would
count as sent), and the key must never travel to another origin. A 3xx is a final APIError that
names the Location.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from typing import Any, Dict, Optional

import orjson
import requests

from ._deadline import Watchdog, WatchedAdapter
from ._errors import APIError
from ._payload import EVENTS_PATH, USERS_PATH, Payload

_logger = logging.getLogger("interakt_logging")

MAX_RETRY_AFTER = 60.0


class NetworkError(Exception):
    """The request did not get an HTTP answer (connection refused, reset, timed out, ...).

    Built from the underlying exception's type and text only, so nothing that holds the
    request (and its Authorization header) travels with it.
    """

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        super().__init__(f"{kind}: {text}")


class Transport:
    """Posts payloads; returns the parsed 2xx answer, raises APIError or NetworkError."""

    def __init__(self, api_key: str, host: str, timeout: float, pool_size: int, user_agent: str):
        session = requests.Session()
        adapter = WatchedAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session
        token = base64.b64encode(f"{api_key}:".encode()).decode("ascii")
        headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "User-Agent": user_agent,
            "Accept": "application/json",
        }
        self._templates = {
            path: session.prepare_request(
                requests.Request("POST", host + path, headers=headers, data=b"{}")
            )
            for path in (USERS_PATH, EVENTS_PATH)
        }
        env = session.merge_environment_settings(host + USERS_PATH, {}, None, None, None)
        self._adapter = adapter
        self._timeout = timeout
        self._watchdog = Watchdog()
        self._send_settings: Dict[str, Any] = {
            "timeout": timeout, "proxies": env["proxies"], "verify": env["verify"],
            "cert": env["cert"],
        }

    def __repr__(self) -> str:
        return f"<Transport {next(iter(self._templates.values())).url!r}>"

    def post(self, payload: Payload) -> Any:
        """One attempt. Returns the decoded JSON answer of a 2xx (or its text)."""
        body = payload.wire_body()
        request = self._templates[payload.path].copy()
        request.body = body
        request.headers["Content-Length"] = str(len(body))
        started = time.monotonic()
        error: Optional[Exception] = None
        attempt = self._watchdog.begin(self._timeout)
        try:
            # The adapter directly: Session.send adds hooks, a cookie jar update and redirect
            # handling (~15% of the sender's CPU), and redirects are not to be followed.
            response = self._adapter.send(request, **self._send_settings)
            content = response.content  # read here: a reset mid-body is a network error too
        except Exception as exc:  # requests, urllib3 or socket: all mean "no HTTP answer"
            error = exc
        finally:
            expired = self._watchdog.end(attempt)
        if expired:
            raise NetworkError(
                "Timeout", f"no complete answer within timeout={self._timeout:g}s"
            ) from None
        if error is not None:
            raise NetworkError(type(error).__name__, str(error)[:300]) from None
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug(
                "POST %s -> %s in %.1f ms", payload.path, response.status_code,
                (time.monotonic() - started) * 1000,
            )
        if 300 <= response.status_code < 400:
            location = response.headers.get("Location") or "(no Location header)"
            raise APIError(
                response.status_code,
                f"redirected to {location[:300]}; not followed: a Track API call counts as "
                "delivered only when the API itself accepts it (check host=)",
            )
        return parse_response(response.status_code, content, response.headers, sent=body)

    def close(self) -> None:
        self._watchdog.close()
        self._session.close()


def parse_response(
    status: int, content: bytes, headers: Any, sent: Optional[bytes] = None
) -> Any:
    """The answer of a 2xx, or APIError carrying the server's message and Retry-After (and the
    body ``sent``, whose values its message masks)."""
    try:
        answer: Any = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        answer = content.decode("utf-8", "replace")
    if 200 <= status < 300:
        return answer
    if isinstance(answer, dict):
        message = str(answer.get("message", answer))
    else:
        message = str(answer or "")[:500]
    raise APIError(
        status, message, retry_after=parse_retry_after(headers.get("Retry-After")), sent=sent
    )


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)

