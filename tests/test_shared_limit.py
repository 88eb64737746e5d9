"""``rate_limit_store``: one limiter in Redis for every process of an account (issue 11).

A real redis-server is started on a free loopback port with no persistence and stopped by the
tests; without one on PATH they are skipped (``.ci/run`` installs Debian's ``redis-server``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from interakt_logging import InteraktHandler, ValidationError
from interakt_logging._shared_limit import limiter_key, redacted
from interakt_logging.testing import MockInteraktServer, redis_server

from .conftest import API_KEY
from .test_rate_limit import deliver_from_processes, logged_by

redis = pytest.importorskip("redis", reason="redis-py is not installed (the redis extra)")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    try:
        with redis_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(f"{exc}; .ci/run installs it")


def test_settings_name_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="rate_limit"):
        InteraktHandler(rate_limit_store="redis://127.0.0.1:1/0")  # no rate to share
    with pytest.raises(ValidationError, match="rate_limit_store"):
        InteraktHandler(rate_limit=5, rate_limit_store="http://127.0.0.1:1/0")
    monkeypatch.setenv("INTERAKT_RATE_LIMIT_STORE", "memcached://x")
    with pytest.raises(ValidationError, match="INTERAKT_RATE_LIMIT_STORE"):
        InteraktHandler(rate_limit=5)


def test_the_password_and_the_api_key_stay_hidden() -> None:
    assert redacted("redis://user:secret@127.0.0.1:6379/0") == "redis://user:***@127.0.0.1:6379/0"
    key = limiter_key(API_KEY)
    assert API_KEY not in key and key.startswith("interakt-logging:rate:")
    handler = InteraktHandler(rate_limit=5, rate_limit_store="redis://u:secret@127.0.0.1:1/0")
    try:
        assert "secret" not in repr(handler.settings) and "secret" not in repr(handler.pipeline)
    finally:
        handler.close(timeout=0)


def test_env_names_the_store(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("INTERAKT_RATE_LIMIT_STORE", redis_url)
    handler = InteraktHandler(rate_limit=5)
    try:
        assert handler.settings.rate_limit_store == redis_url
    finally:
        handler.close(timeout=0)


@pytest.mark.slow
@pytest.mark.parametrize("store, error", [("closed", "ConnectionError"), ("silent", "TimeoutError")])
def test_a_store_out_of_reach_warns_once_and_delivery_goes_on(
    store: str, error: str, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the store's port ("closed"), or something takes the connection and
    never answers ("silent", a hung Redis: senders wait 0.25 s at most). Either way the process
    warns once and delivers everything with its own pace."""
    with socket.socket() as silent, MockInteraktServer() as server:
        silent.bind(("127.0.0.1", 0))
        if store == "silent":
            silent.listen(64)  # connections are queued by the kernel and never answered
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        handler = InteraktHandler(host=server.url, rate_limit=200, rate_limit_store=url)
        logger.addHandler(handler)
        with caplog.at_level(logging.WARNING, logger="interakt_logging"):
            for i in range(50):
                logger.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})
            assert handler.flush(30)
        handler.close()
        assert len(server.events()) == 50
    warnings = [r.getMessage() for r in caplog.records if "rate_limit_store" in r.getMessage()]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and error in warnings[0]


@pytest.mark.slow
def test_processes_share_one_limiter_through_redis(redis_url: str) -> None:
    processes, events = 4, 75
    with MockInteraktServer(rate_limit=100, latency=0.01) as server:
        started = time.monotonic()
        stats = deliver_from_processes(server.url, processes, events, rate_limit=90,
                                       rate_limit_store=redis_url)
        elapsed = time.monotonic() - started
        delivered = sorted(b["userId"] for b in server.events())
        throttled = len(server.throttled)
    assert delivered == logged_by(processes, events)
    assert sum(s["failed"] + s["dropped"] for s in stats) == 0
    assert throttled <= 0.05 * len(delivered)
    assert elapsed > processes * events / 90 * 0.9  # the shared rate held them all back
    keys = redis.Redis.from_url(redis_url).keys("interakt-logging:*")
    assert keys == [limiter_key(API_KEY).encode()]
