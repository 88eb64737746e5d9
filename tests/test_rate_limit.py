"""Account-wide rate limits against a real loopback server (issue 11), at scaled-down sizes:
nothing lost, few 429s, requests in flight that follow the round trip. The full-size targets
are measured in bench/run.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any, List

import pytest
import requests

from interakt_logging import DeliveryError, InteraktHandler
from interakt_logging._workers import Workers
from interakt_logging.testing import MockInteraktServer, RecordedRequest, Reply

from .conftest import wait_until

pytestmark = pytest.mark.slow


def event(user_id: str) -> dict[str, Any]:
    return {"interakt_event": {"user_id": user_id}}


def share_429(server: MockInteraktServer) -> float:
    return len(server.throttled) / max(1, len(server.requests))


def test_the_mock_limits_all_clients_together_with_interakts_answer() -> None:
    with MockInteraktServer(rate_limit=5) as server:
        answers = [requests.post(server.url + "/v1/public/track/events/", json={}, timeout=5)
                   for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    assert answers[-1].json() == {"result": False,
                                  "message": "Rate limit exceeded for this resource"}
    assert "Retry-After" not in answers[-1].headers


def test_429s_never_lose_a_payload_and_the_process_finds_its_pace(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with MockInteraktServer(rate_limit=100, latency=0.005) as server:
        handler = InteraktHandler(host=server.url, max_retries=0, debug=True)  # no retries
        logger.addHandler(handler)
        with caplog.at_level(logging.DEBUG, logger="interakt_logging"):
            for i in range(400):
                logger.info("Order Placed", extra=event(str(i)))
            assert handler.flush(60)
        stats = handler.stats()
        handler.close()
        assert sorted(b["userId"] for b in server.events()) == sorted(str(i) for i in range(400))
        assert stats["failed"] == stats["dropped"] == 0
        assert stats["throttled"] == len(server.throttled) > 0
        assert stats["pace"] is not None
        assert share_429(server) < 0.25
    logging.getLogger("interakt_logging").setLevel(logging.NOTSET)  # debug=True raised it
    paces = [r.getMessage() for r in caplog.records if "pace" in r.getMessage()]
    assert paces and "(429)" in paces[0]  # debug logs each change of pace


def test_a_throttled_payload_waits_until_the_exit_bound_and_is_reported_then(
    logger: logging.Logger,
) -> None:
    errors: List[Exception] = []
    with MockInteraktServer() as server:
        server.responder = lambda request: Reply(429)
        handler = InteraktHandler(host=server.url, max_retries=0, shutdown_timeout=0.5,
                                  on_error=lambda e, p: errors.append(e))
        logger.addHandler(handler)
        for i in range(3):
            logger.info("Order Placed", extra=event(str(i)))
        wait_until(lambda: len(server.requests) >= 3, lambda: f"{len(server.requests)} requests")
        assert not errors  # a 429 alone never ends a payload
        handler.close()
    assert len(errors) == 3
    assert all(isinstance(e, DeliveryError) and e.reason == "shutdown" for e in errors)


def test_requests_in_flight_grow_with_the_round_trip_and_threads_retire_when_quiet(
    logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Workers, "IDLE_EXIT", 0.3)
    peak: List[int] = []

    def count(request: RecordedRequest) -> None:
        peak.append(handler.stats()["requests_in_flight"])

    with MockInteraktServer(latency=0.1, on_request=count) as server:
        handler = InteraktHandler(host=server.url, workers=24)
        logger.addHandler(handler)
        for i in range(300):
            logger.info("Order Placed", extra=event(str(i)))
        assert handler.flush(60)
        assert handler.stats()["in_flight_limit"] > 12  # from 4, while the backlog waited
        assert max(peak) > 12
        wait_until(lambda: handler.stats()["sender_threads"] == 1,
                   lambda: f"threads: {handler.stats()['sender_threads']}")
        handler.close()


def test_a_429_shrinks_the_window_of_requests_in_flight(logger: logging.Logger) -> None:
    with MockInteraktServer(latency=0.05, rate_limit=60) as server:
        handler = InteraktHandler(host=server.url, workers=24)
        logger.addHandler(handler)
        for i in range(200):
            logger.info("Order Placed", extra=event(str(i)))
        assert handler.flush(60)
        stats = handler.stats()
        handler.close()
    assert stats["throttled"] > 0 and stats["in_flight_limit"] < 24
    assert stats["sent"] == 200


CHILD = """
import json, logging, sys
from interakt_logging import InteraktHandler
url, name, events, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
handler = InteraktHandler(host=url, shutdown_timeout=120, **settings)
log = logging.getLogger("child")
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(events):
    log.info("Order Placed", extra={"interakt_event": {"user_id": f"{name}-{i}"}})
handler.close()
print(json.dumps(handler.stats()))
"""


def deliver_from_processes(
    url: str, processes: int, events: int, **settings: Any
) -> List[dict[str, Any]]:
    """Real processes log ``events`` each at once (user ids ``P-I``) and close; their stats()."""
    children = [subprocess.Popen([sys.executable, "-c", CHILD, url, str(p), str(events),
                                  json.dumps(settings)], stdout=subprocess.PIPE, text=True)
                for p in range(processes)]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert all(child.returncode == 0 for child in children)
    return [json.loads(out) for out in outputs]


def logged_by(processes: int, events: int) -> List[str]:
    return sorted(f"{p}-{i}" for p in range(processes) for i in range(events))


def test_processes_sharing_one_account_limit_lose_nothing() -> None:
    processes, events = 3, 80
    with MockInteraktServer(rate_limit=100, latency=0.01) as server:
        stats = deliver_from_processes(server.url, processes, events)
        delivered = sorted(b["userId"] for b in server.events())
    assert delivered == logged_by(processes, events)
    assert sum(s["failed"] + s["dropped"] for s in stats) == 0
    assert share_429(server) < 0.3
