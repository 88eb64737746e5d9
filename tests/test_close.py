"""flush(), close() and the exit drain: what each waits for, what it returns, what it reports.

In process against a loopback API for flush and close; in real subprocesses for what happens
at exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable

import pytest

from interakt_logging import FlushResult, InteraktHandler, _lifecycle, track
from interakt_logging._lifecycle import PROGRESS_AFTER, PROGRESS_EVERY_LINES, ProgressLine
from interakt_logging.testing import MockInteraktServer, Reply

from .conftest import API_KEY, wait_until


def event(user_id: Any) -> dict[str, Any]:
    return {"interakt_event": {"user_id": user_id}}


# -- flush() ------------------------------------------------------------------------------------


def test_flush_is_false_when_every_payload_was_refused(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Issue 10: flush() returned True when all three payloads were refused with 401."""
    server.script(401, 401, 401)
    handler = make_handler()
    logger.addHandler(handler)
    for i in range(3):
        logger.info("Order Placed", extra=event(str(i)))
    result = handler.flush(10)
    assert not result
    assert result == FlushResult(delivered=0, failed=3, pending=0)


def test_flush_counts_what_was_queued_since_the_previous_flush(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.script(Reply(400))
    handler = make_handler()
    logger.addHandler(handler)
    for i in range(5):
        logger.info("Order Placed", extra=event(str(i)))
    assert handler.flush(10) == FlushResult(delivered=4, failed=1)
    for i in range(5, 8):
        logger.info("Order Placed", extra=event(str(i)))
    second = handler.flush(10)
    assert second == FlushResult(delivered=3) and second
    assert handler.flush(10) == FlushResult()  # nothing since: true


def test_a_flush_that_times_out_says_how_many_are_pending(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.hang = True
    handler = make_handler(workers=2, shutdown_timeout=0.5)  # the teardown's close waits that long
    logger.addHandler(handler)
    for i in range(6):
        logger.info("Order Placed", extra=event(str(i)))
    result = handler.flush(0.3)
    assert not result and result.pending == 6 and result.delivered == result.failed == 0
    handler.close(timeout=0)


def test_track_flush_returns_the_same_result(server: MockInteraktServer) -> None:
    track.host = server.url
    try:
        server.script(401)
        track.event(user_id="1", event="Paid")
        track.event(user_id="2", event="Paid")
        assert track.flush(10) == FlushResult(delivered=1, failed=1)
    finally:
        track.shutdown()
        track.host = None
    assert track.flush() == FlushResult()  # no client: nothing queued


# -- close() with requests in flight ------------------------------------------------------------


@pytest.mark.slow
def test_close_waits_for_requests_in_flight_and_counts_them_sent(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler]
) -> None:
    """Issue 9: close() with requests in flight reported "payload lost" for payloads the API
    then accepted (8 of 20). A close without a timeout waits while they are answered."""
    errors: list[Exception] = []
    with MockInteraktServer(latency=0.3) as slow:
        handler = make_handler(host=slow.url, workers=20, shutdown_timeout=2,
                               on_error=lambda e, p: errors.append(e))
        logger.addHandler(handler)
        for i in range(20):
            logger.info("Order Placed", extra=event(str(i)))
        wait_until(lambda: len(slow.requests) > 0, lambda: "no request out")
        assert handler.pipeline.close() is True
        assert errors == []
        assert handler.stats()["sent"] == 20 and len(slow.delivered) == 20


@pytest.mark.slow
def test_close_with_a_timeout_is_a_hard_bound_and_leaves_requests_out_to_their_answers(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler]
) -> None:
    """An explicit timeout returns on time: what was never sent is reported, and requests out
    stay with their workers, so an answer that comes later counts them as sent (never reported
    and then delivered). The next drain settles whatever is still out."""
    errors: list[Exception] = []
    with MockInteraktServer(latency=1.0) as slow:
        handler = make_handler(host=slow.url, workers=4, on_error=lambda e, p: errors.append(e))
        logger.addHandler(handler)
        for i in range(6):
            logger.info("Order Placed", extra=event(str(i)))
        wait_until(lambda: len(slow.requests) > 0, lambda: "no request out")
        started = time.monotonic()
        assert handler.pipeline.close(timeout=0.2) is False
        assert time.monotonic() - started < 0.8
        out = len(slow.requests)  # none was answered yet
        assert len(errors) == 6 - out and all("payload lost" in str(e) for e in errors)
        assert handler.pipeline in _lifecycle._pipelines  # the exit drain would settle them
        wait_until(lambda: handler.stats()["sent"] == out, lambda: str(handler.stats()))
    assert len(errors) == 6 - out and handler.stats()["failed"] == 6 - out
    # The last answer finished the close: connections released, off the exit hook's list.
    wait_until(lambda: handler.pipeline not in _lifecycle._pipelines, lambda: "still listed")
    assert handler.pipeline.close() is True


def test_close_is_idempotent_and_a_later_close_settles_what_an_earlier_one_left_out(
    logger: logging.Logger, make_handler: Callable[..., InteraktHandler]
) -> None:
    errors: list[Exception] = []
    with MockInteraktServer(latency=0.3) as slow:
        handler = make_handler(host=slow.url, on_error=lambda e, p: errors.append(e))
        logger.addHandler(handler)
        for i in range(3):
            logger.info("Order Placed", extra=event(str(i)))
        wait_until(lambda: len(slow.requests) > 0, lambda: "no request out")
        assert handler.pipeline.close(timeout=0) is False  # requests out, others never sent
        out = len(slow.requests)
        assert handler.pipeline.close() is True  # their answers came: nothing left
        assert handler.pipeline.close(timeout=0) is True and handler.pipeline.close() is True
    assert len(errors) == 3 - out and handler.stats()["sent"] == out


def test_concurrent_closes_report_each_payload_once(
    logger: logging.Logger, server: MockInteraktServer, make_handler: Callable[..., InteraktHandler]
) -> None:
    server.hang = True
    errors: list[Exception] = []
    handler = make_handler(on_error=lambda e, p: errors.append(e), shutdown_timeout=0.2)
    logger.addHandler(handler)
    for i in range(50):
        logger.info("Order Placed", extra=event(str(i)))
    wait_until(lambda: len(server.requests) > 0, lambda: "no request out")
    closers = [threading.Thread(target=handler.close, kwargs={"timeout": 0.2}) for _ in range(4)]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(10)
    out = len(server.requests)  # still out, unreported: an answer would count
    assert len(errors) == 50 - out and handler.stats()["failed"] == 50 - out
    assert handler.stats()["in_flight"] == out


# -- the progress line --------------------------------------------------------------------------


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_the_progress_line_is_redrawn_in_place_on_a_terminal() -> None:
    stream = FakeStderr(tty=True)
    line = ProgressLine("exit", stream=stream, started=0.0)
    line.show(5000, now=0.5)  # under a second: nothing
    assert stream.getvalue() == ""
    line.show(4229, now=PROGRESS_AFTER)
    line.show(4000, now=PROGRESS_AFTER + 0.01)  # too soon to redraw
    line.show(12, now=PROGRESS_AFTER + 1)
    line.end()
    text = stream.getvalue()
    assert text.startswith("\rinterakt-logging: delivering 4,229 queued payloads before exit")
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "delivering 12 queued payloads before exit (Ctrl-C to stop)" in text


def test_the_progress_line_is_a_rate_limited_plain_line_elsewhere() -> None:
    stream = FakeStderr(tty=False)
    line = ProgressLine("exit", stream=stream, started=0.0)
    for tick in range(int(PROGRESS_EVERY_LINES * 2 * 10) + 1):
        line.show(100, now=PROGRESS_AFTER + tick / 10)
    line.end()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == ["interakt-logging: delivering 100 queued payloads before exit (Ctrl-C to stop)"] * 3


def test_a_closed_stderr_does_not_break_the_drain() -> None:
    stream = FakeStderr(tty=True)
    stream.close()
    line = ProgressLine("exit", stream=stream, started=0.0)
    line.show(1, now=5.0)
    line.end()


# -- at exit, on Ctrl-C, on SIGTERM: real processes ---------------------------------------------

PRELUDE = """
import logging, os, signal, sys
from interakt_logging import InteraktHandler
def on_error(error, payload):  # one write: senders and the main thread may report at once
    sys.stdout.write(f"reported {payload['body']['userId']} {error}\\n")
    sys.stdout.flush()
log = logging.getLogger("shop")
log.setLevel(logging.INFO)
log.propagate = False
def event(uid):
    return {"interakt_event": {"user_id": uid}}
"""


def start(code: str, server: MockInteraktServer) -> subprocess.Popen[str]:
    env = {**os.environ, "INTERAKT_API_KEY": API_KEY, "INTERAKT_HOST": server.url}
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def reported(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("reported ")]


def accounted(server: MockInteraktServer, stdout: str, count: int) -> tuple[set[str], set[str]]:
    """Every payload is delivered or reported; a payload both delivered and reported was one
    whose request was out when the drain stopped (reported as possibly recorded)."""
    delivered = {r.body["userId"] for r in server.delivered}
    lost = set(reported(stdout))
    assert len(lost) == len(reported(stdout)), "a payload was reported twice"
    assert delivered | lost == {str(i) for i in range(count)}
    return delivered, lost


@pytest.mark.slow
@pytest.mark.parametrize("interruption", ["SIGINT", "SIGTERM"])
def test_an_interrupted_close_loses_nothing_silently(interruption: str) -> None:
    """Issue 9 item 6: Ctrl-C (KeyboardInterrupt) or SIGTERM -> sys.exit while close() waits
    left 90 of 100 queued payloads neither delivered nor reported. Ctrl-C reports what was not
    sent at once (the requests out are settled by the exit drain); sys.exit leaves the close to
    the exit drain, which delivers them all."""
    with MockInteraktServer(latency=0.05) as server:
        proc = start("""
            signal.signal(signal.SIGTERM, lambda *args: sys.exit(3))
            handler = InteraktHandler(on_error=on_error, workers=2, shutdown_timeout=5)
            log.addHandler(handler)
            for i in range(100):
                log.info("Order Placed", extra=event(str(i)))
            print("closing", flush=True)
            handler.close()
        """, server)
        assert proc.stdout is not None and proc.stdout.readline() == "closing\n"
        server.wait_for(4, timeout=20)
        proc.send_signal(getattr(signal, interruption))
        stdout, stderr = proc.communicate(timeout=60)
        delivered, lost = accounted(server, "closing\n" + stdout, 100)
    if interruption == "SIGINT":
        assert "KeyboardInterrupt" in stderr
        assert len(lost) >= 80 and delivered.isdisjoint(lost)  # requests out were answered
        assert f"interrupted (Ctrl-C) with {len(lost)} payload(s) undelivered" in stderr
    else:
        assert proc.returncode == 3
        assert lost == set() and len(delivered) == 100


@pytest.mark.slow
def test_a_backfill_script_delivers_everything_at_a_healthy_api() -> None:
    """Issue 10 item 5: 5,000 events at a 10 ms API, and the script just ends: ~3,600 were
    delivered, the rest reported lost after shutdown_timeout. The drain goes on while it makes
    progress, and says so on stderr."""
    with MockInteraktServer(latency=0.01) as server:
        proc = start("""
            log.addHandler(InteraktHandler(on_error=on_error))
            for i in range(5000):
                log.info("Order Placed", extra=event(str(i)))
        """, server)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert reported(stdout) == []
        assert len({r.body["userId"] for r in server.delivered}) == 5000
    assert "queued payloads before exit (Ctrl-C to stop)" in stderr
    assert "undelivered" not in stderr


@pytest.mark.slow
def test_the_exit_drain_gives_up_after_shutdown_timeout_without_progress() -> None:
    with MockInteraktServer(latency=0.05) as server:
        hang_after = 20
        server.responder = lambda request: (
            Reply(hang=True) if len(server.requests) > hang_after else None
        )
        proc = start("""
            log.addHandler(InteraktHandler(on_error=on_error, workers=2, shutdown_timeout=1))
            for i in range(200):
                log.info("Order Placed", extra=event(str(i)))
        """, server)
        started = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - started
        assert proc.returncode == 0, stderr
        delivered, lost = accounted(server, stdout, 200)
    assert len(delivered) >= hang_after - 2 and delivered.isdisjoint(lost)
    assert f"closed with {len(lost)} payload(s) undelivered: {len(lost)} lost" in stderr
    assert stdout.count("may or may not have recorded") == 2  # the two hung requests
    assert "nothing was delivered for shutdown_timeout=1s" in stderr
    assert took < 20


@pytest.mark.slow
def test_ctrl_c_during_the_exit_drain_reports_the_rest() -> None:
    with MockInteraktServer(latency=0.1) as server:
        proc = start("""
            log.addHandler(InteraktHandler(on_error=on_error, workers=2))
            for i in range(300):
                log.info("Order Placed", extra=event(str(i)))
        """, server)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the progress line: the drain has run for a second
        assert "queued payloads before exit (Ctrl-C to stop)" in line
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        delivered, lost = accounted(server, stdout, 300)
    assert len(lost) >= 200 and len(delivered & lost) <= 2
    assert f"interrupted (Ctrl-C) with {len(lost)} payload(s) undelivered" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_drain_all_is_reentrant_from_a_signal_handler() -> None:
    """A SIGTERM handler that drains, arriving while close() is already draining: the nested
    drain finishes the job, each payload is delivered or reported once, and the outer close
    returns."""
    with MockInteraktServer(latency=0.05) as server:
        proc = start("""
            from interakt_logging import _lifecycle
            def drain(*args):
                _lifecycle.drain_all("exit on SIGTERM")
                print("drained", flush=True)
            signal.signal(signal.SIGTERM, drain)
            handler = InteraktHandler(on_error=on_error, workers=2)
            log.addHandler(handler)
            for i in range(60):
                log.info("Order Placed", extra=event(str(i)))
            print("closing", flush=True)
            print("closed", handler.pipeline.close(), flush=True)
        """, server)
        assert proc.stdout is not None and proc.stdout.readline() == "closing\n"
        server.wait_for(4, timeout=20)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        delivered, lost = accounted(server, stdout, 60)
    assert lost == set() and len(delivered) == 60
    assert stdout.index("drained") < stdout.index("closed True")
