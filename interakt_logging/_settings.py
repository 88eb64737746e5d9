"""Settings shared by InteraktHandler and the ``track`` module, checked once at construction."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ._errors import ValidationError

DEFAULT_HOST = "https://api.interakt.ai"
API_KEY_ENV = "INTERAKT_API_KEY"
HOST_ENV = "INTERAKT_HOST"
RATE_LIMIT_STORE_ENV = "INTERAKT_RATE_LIMIT_STORE"
# The key of a handler built with none configured while testing.capture() intercepts every
# payload (decided in InteraktHandler.__init__), so nothing is ever sent with it.
CAPTURE_PLACEHOLDER_KEY = "interakt-logging-capture-placeholder"

ErrorCallback = Callable[[Exception, Any], Any]

_logger = logging.getLogger("interakt_logging")


@dataclass(frozen=True)
class Settings:
    """Validated settings, built only by ``make_settings`` (the defaults live in the signature
    of InteraktHandler). ``api_key`` is kept out of ``repr`` so it never reaches a log line."""

    api_key: Optional[str] = field(repr=False)  # None: no key configured (see no_key_error)
    host: str
    sync_mode: bool
    debug: bool
    timeout: float
    max_retries: int
    max_queue_size: int
    on_error: Optional[ErrorCallback]
    workers: int
    batch_size: int
    shutdown_timeout: float
    block_on_full: bool
    block_timeout: float
    rate_limit: Optional[float]
    rate_limit_store: Optional[str] = field(repr=False)  # its URL may hold a password
    outbox: Optional[str]
    outbox_max_bytes: int


def make_settings(
    *,
    api_key: str | None,
    host: str | None,
    sync_mode: bool,
    debug: bool,
    timeout: float,
    max_retries: int,
    max_queue_size: int,
    on_error: ErrorCallback | None,
    workers: int,
    batch_size: int,
    shutdown_timeout: float,
    block_on_full: bool,
    block_timeout: float,
    rate_limit: float | None,
    rate_limit_store: str | None,
    outbox: str | os.PathLike[str] | None,
    outbox_max_bytes: int,
) -> Settings:
    """Check every setting and return them frozen; raise ValidationError naming the bad one."""
    _require_number("timeout", timeout, minimum=0, exclusive=True)
    _require_int("max_retries", max_retries, minimum=0)
    _require_int("max_queue_size", max_queue_size, minimum=1)
    _require_int("workers", workers, minimum=1)
    _require_int("batch_size", batch_size, minimum=1)
    _require_number("shutdown_timeout", shutdown_timeout, minimum=0)
    _require_number("block_timeout", block_timeout, minimum=0)
    _require_int("outbox_max_bytes", outbox_max_bytes, minimum=4096)
    if rate_limit is not None:
        _require_number("rate_limit", rate_limit, minimum=0, exclusive=True)
    store = resolve_rate_limit_store(rate_limit_store, rate_limit)
    if on_error is not None and not callable(on_error):
        raise ValidationError(
            "on_error", on_error, "a callable(error, payload) or None", shown=True
        )
    flags = {"sync_mode": sync_mode, "debug": debug, "block_on_full": block_on_full}
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValidationError(name, flag, "True or False", shown=True)
    if debug:  # before the key is resolved, so the key form detected is logged too
        _logger.setLevel(logging.DEBUG)
    return Settings(
        api_key=resolve_api_key(api_key),
        host=resolve_host(host),
        sync_mode=sync_mode,
        debug=debug,
        timeout=float(timeout),
        max_retries=max_retries,
        max_queue_size=max_queue_size,
        on_error=on_error,
        workers=workers,
        batch_size=batch_size,
        shutdown_timeout=float(shutdown_timeout),
        block_on_full=block_on_full,
        block_timeout=float(block_timeout),
        rate_limit=None if rate_limit is None else float(rate_limit),
        rate_limit_store=store,
        outbox=None if outbox is None else os.fspath(outbox),
        outbox_max_bytes=outbox_max_bytes,
    )


def resolve_api_key(api_key: str | None) -> str | None:
    """Return the key to authenticate with, from the argument or ``INTERAKT_API_KEY``; None when
    neither is set, so an app (and every ``manage.py`` command) starts without one.

    Both forms users hold are accepted: the decoded key the original SDK wants, and the Secret
    Key exactly as the dashboard shows it (base64 of ``key:``), which is detected and decoded.
    Errors and debug lines describe the key, never show it.
    """
    if api_key == CAPTURE_PLACEHOLDER_KEY:
        _logger.debug("no api key configured: testing.capture() is active, none is needed")
        return api_key
    source = "the api_key argument"
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
        source = f"the {API_KEY_ENV} environment variable"
    if api_key is None:
        return None
    if not isinstance(api_key, str):
        raise ValidationError(
            "api_key", f"<a {type(api_key).__name__}, hidden>", "the key as a str", shown=True
        )
    key = api_key.strip()
    if not key:
        raise ValidationError("api_key", "<empty>", f"a non-empty key (from {source})", shown=True)
    decoded = _decode_dashboard_form(key)
    if decoded is not None:
        _logger.debug("api key from %s: dashboard Secret Key form detected, decoded", source)
        return decoded
    _logger.debug("api key from %s: used as given (decoded form)", source)
    return key


def no_key_error() -> ValidationError:
    """What a payload is refused with when no key is configured (and what ``track`` and the CLI
    raise at the call, as the original SDK did)."""
    return ValidationError(
        "api_key", None, f"the Interakt API key, passed as api_key= or set in {API_KEY_ENV}"
    )


def require_api_key(api_key: str | None) -> None:
    """For calls that fail at once without a key (``track``, the CLI), as the original SDK's."""
    if api_key is None and os.environ.get(API_KEY_ENV) is None:
        raise no_key_error()


def _decode_dashboard_form(key: str) -> str | None:
    """The dashboard shows base64(key + ":"); return the inner key when ``key`` has that form."""
    if len(key) % 4:
        return None
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) > 1 and text.endswith(":") and ":" not in text[:-1] and text[:-1].isprintable():
        return text[:-1]
    return None


def resolve_rate_limit_store(store: str | None, rate_limit: float | None) -> str | None:
    """The shared limiter's Redis URL, from the argument or ``INTERAKT_RATE_LIMIT_STORE``;
    it needs ``rate_limit`` (the account-wide rate to share) and the ``redis`` extra."""
    field = "rate_limit_store"
    if store is None:
        store = os.environ.get(RATE_LIMIT_STORE_ENV, "").strip() or None
        field = RATE_LIMIT_STORE_ENV
    if store is None:
        return None
    expected = "a Redis URL: redis://host:6379/0, rediss://... or unix:///path/to/redis.sock"
    if not isinstance(store, str):
        raise ValidationError(field, type(store).__name__, expected, shown=True)
    scheme = urllib.parse.urlsplit(store.strip()).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValidationError(field, f"<a URL with scheme {scheme!r}>", expected, shown=True)
    if rate_limit is None:
        raise ValidationError(
            "rate_limit", None, f"the account-wide requests/s to share, when {field} is set",
            shown=True,
        )
    try:
        import redis  # noqa: F401  (the optional extra: only checked for here)
    except ImportError:
        raise ValidationError(
            field, "<set>", "redis-py installed: pip install 'interakt-logging[redis]'", shown=True
        ) from None
    return store.strip()


def resolve_host(host: str | None) -> str:
    """The host from the argument, else ``INTERAKT_HOST`` (so a config file or a test run can
    point at a mock without code changes), else the Track API; checked by ``check_host``."""
    if host is not None:
        return check_host(host)
    from_env = os.environ.get(HOST_ENV, "").strip()
    if not from_env:
        return DEFAULT_HOST
    return check_host(from_env, field=HOST_ENV)


def check_host(host: Any, field: str = "host") -> str:
    """https anywhere, plain http only to a loopback address; a trailing slash is dropped."""
    if not isinstance(host, str):
        raise ValidationError(field, host, "a URL such as 'https://api.interakt.ai'", shown=True)
    parts = urllib.parse.urlsplit(host.strip())
    expected = "an https:// URL, or http:// to a loopback address (127.0.0.1, ::1, localhost)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(field, host, expected)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationError(field, host, expected + " without query, fragment or credentials")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValidationError(field, host, expected, shown=True)  # no credentials: see above
    return host.strip().rstrip("/")


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(name, value, f"an int >= {minimum}", shown=True)


def _require_number(name: str, value: Any, *, minimum: float, exclusive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > minimum if exclusive else value >= minimum
    if not ok:
        relation = ">" if exclusive else ">="
        raise ValidationError(name, value, f"a number {relation} {minimum}", shown=True)
