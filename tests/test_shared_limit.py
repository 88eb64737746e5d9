"""``rate_limit_store``: one limiter in Redis for every process of an account (issue 11).

A real redis-server is started on a free loopback port with no persistence and stopped by the
tests; without one on PATH they are skipped (``.ci/run`` installs Debian's ``redis-server``).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from interakt_logging import InteraktHandler, ValidationError
from interakt_logging._shared_limit import limiter_key, redacted
from interakt_logging.testing import MockInteraktServer

from .conftest import API_KEY, wait_until

redis = pytest.importorskip("redis", reason="redis-py is not installed (the redis extra)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server; .ci/run does)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(ready, lambda: "redis-server did not start", timeout=10)
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(10)


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
def test_an_unreachable_store_warns_once_and_delivery_goes_on(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with MockInteraktServer() as server:
        handler = InteraktHandler(host=server.url, rate_limit=200, rate_limit_store=closed)
        logger.addHandler(handler)
        with caplog.at_level(logging.WARNING, logger="interakt_logging"):
            for i in range(100):
                logger.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})
            assert handler.flush(30)
        handler.close()
        assert len(server.events()) == 100
    warnings = [r.getMessage() for r in caplog.records if "rate_limit_store" in r.getMessage()]
    assert len(warnings) == 1 and "unreachable" in warnings[0]


@pytest.mark.slow
def test_a_store_that_never_answers_is_given_up_on_after_its_socket_timeout(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that takes the connection and then says nothing (a hung Redis): senders wait
    0.25 s at most, warn once, and deliver with the process's own pace."""
    with socket.socket() as silent, MockInteraktServer() as server:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections are queued by the kernel and never answered
        store = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        handler = InteraktHandler(host=server.url, rate_limit=200, rate_limit_store=store)
        logger.addHandler(handler)
        with caplog.at_level(logging.WARNING, logger="interakt_logging"):
            for i in range(50):
                logger.info("Order Placed", extra={"interakt_event": {"user_id": str(i)}})
            assert handler.flush(30)
        handler.close()
        assert len(server.events()) == 50
    warnings = [r.getMessage() for r in caplog.records if "rate_limit_store" in r.getMessage()]
    assert len(warnings) == 1 and "TimeoutError" in warnings[0]


CHILD = """
    import json, logging, sys
    from interakt_logging import InteraktHandler
    handler = InteraktHandler(host=sys.argv[1], rate_limit=float(sys.argv[3]),
                              rate_limit_store=sys.argv[4], shutdown_timeout=120)
    log = logging.getLogger("child")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for i in range({events}):
        log.info("Order Placed", extra={{"interakt_event": {{"user_id": f"{{sys.argv[2]}}-{{i}}"}}}})
    handler.close()
    print(json.dumps(handler.stats()))
"""


@pytest.mark.slow
def test_processes_share_one_limiter_through_redis(tmp_path: Any, redis_url: str) -> None:
    processes, events = 4, 75
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(events=events)))
    with MockInteraktServer(rate_limit=100, latency=0.01) as server:
        started = time.monotonic()
        children = [
            subprocess.Popen([sys.executable, str(script), server.url, str(p), "90", redis_url],
                             stdout=subprocess.PIPE, text=True)
            for p in range(processes)
        ]
        outputs = [child.communicate(timeout=120)[0] for child in children]
        elapsed = time.monotonic() - started
        assert all(child.returncode == 0 for child in children)
        stats = [json.loads(out) for out in outputs]
        delivered = sorted(b["userId"] for b in server.events())
        throttled = len(server.throttled)
    assert delivered == sorted(f"{p}-{i}" for p in range(processes) for i in range(events))
    assert sum(s["failed"] + s["dropped"] for s in stats) == 0
    assert throttled <= 0.05 * len(delivered)
    assert elapsed > processes * events / 90 * 0.9  # the shared rate held them all back
    keys = redis.Redis.from_url(redis_url).keys("interakt-logging:*")
    assert keys == [limiter_key(API_KEY).encode()]
