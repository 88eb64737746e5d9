"""A drop-in for interakt-track-python's module API: ``from interakt_logging import track``.

The settings are module attributes with the original SDK's names and defaults, read once, when the
first call builds the default InteraktHandler (``default_client``). Every call goes through that
handler's ``submit``, as the structlog processor's do: validated and serialized at the call, then
its queue and its sender, the same a logged record takes. A failure is reported as a logged
record's is (counted, ``on_error``, a warning) and raised: ValidationError naming the field for
bad arguments, in background and sync mode alike, and in sync mode APIError / DeliveryError.
Assigning a handler the app already has to ``default_client`` makes the calls share it.
``shutdown()`` delivers what is queued and drops the default client, so a later call builds a
fresh one from the (possibly changed) attributes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Dict, Optional

import orjson

from ._backlog import FlushResult
from ._handler import InteraktHandler
from ._payload import DEFAULT_COUNTRY_CODE, EVENTS_PATH, USERS_PATH
from ._pipeline import capturing
from ._settings import ErrorCallback, require_api_key

# Settings, as in the original SDK (None for api_key and host: INTERAKT_API_KEY / INTERAKT_HOST,
# then the Track API).
api_key: Optional[str] = None
host: Optional[str] = None
sync_mode: bool = False
debug: bool = False
timeout: float = 10
max_retries: int = 3
max_queue_size: int = 10000
on_error: Optional[ErrorCallback] = None

default_client: Optional[InteraktHandler] = None
"""The handler behind the module functions: built on first use (or assigned), dropped (and
closed) by ``shutdown()``."""

# re-entrant: a signal handler calling track may interrupt this thread while it holds it
_client_lock = threading.RLock()


def user(
    user_id: Any = None,
    country_code: Any = DEFAULT_COUNTRY_CODE,
    phone_number: Any = None,
    traits: Optional[Mapping[str, Any]] = None,
    created_at: Any = None,
) -> Any:
    """Create or update a user and set their traits.

    Background mode returns ``(True, {"path": ..., "body": ...})`` once queued, ``(False, same)``
    when the queue was full or the client closed; sync mode returns the API's JSON answer and
    raises APIError (with ``status_code``) or DeliveryError when the call fails. Either way a
    failure is reported to ``on_error`` first, and bad arguments raise ValidationError.
    """
    return _submit(USERS_PATH, {
        "user_id": user_id, "phone_number": phone_number, "country_code": country_code,
        "traits": traits, "created_at": created_at,
    })


def event(
    user_id: Any = None,
    event: Any = None,
    traits: Optional[Mapping[str, Any]] = None,
    country_code: Any = DEFAULT_COUNTRY_CODE,
    phone_number: Any = None,
    created_at: Any = None,
) -> Any:
    """Record an event on the user's timeline; returns like ``user()``."""
    return _submit(EVENTS_PATH, {
        "user_id": user_id, "phone_number": phone_number, "country_code": country_code,
        "traits": traits, "created_at": created_at, "event": event,
    })


def flush(timeout: Optional[float] = None) -> FlushResult:
    """Wait until everything queued so far is delivered or failed, at most ``timeout`` seconds
    (default: the handler's shutdown_timeout). The result counts what was queued since the
    previous flush and is true only when all of it was delivered (see ``FlushResult``)."""
    client = default_client
    return FlushResult() if client is None else client.flush(timeout)


def shutdown() -> None:
    """Deliver what is queued (bounded by shutdown_timeout), stop the sender and drop the default
    client; the next call starts a new one from the module attributes."""
    global default_client
    with _client_lock:
        client, default_client = default_client, None
    if client is not None:
        client.close()


def join() -> None:
    """The same as ``shutdown()``: the original's ``join`` also stopped its sender for good."""
    shutdown()


def _submit(path: str, tag: Dict[str, Any]) -> Any:
    """One call through the default client's ``submit``, answered as the original SDK did.
    ``tag`` holds the call's arguments as a logged tag would."""
    client = default_client or _build_default_client()
    path, body, _, accepted, answer = client.submit(path, tag)  # a Submitted
    if client.settings.sync_mode:
        return answer
    # As the original: whether it was queued, and the message as queued (the sender adds
    # createdAt; on_error receives the message with it).
    return accepted, {"path": path, "body": orjson.loads(body)}


def _build_default_client() -> InteraktHandler:
    global default_client
    with _client_lock:
        if default_client is None:
            if not capturing():  # testing.capture() needs no key
                require_api_key(api_key)  # raises at the call, as the original SDK did
            default_client = InteraktHandler(
                api_key=api_key, host=host, sync_mode=sync_mode, debug=debug, timeout=timeout,
                max_retries=max_retries, max_queue_size=max_queue_size, on_error=on_error,
            )
        return default_client
