"""The in-memory backlog on its own: no sockets, no threads but the test's, no sleeps.

It answers "is everything up to this marker finished?" (flush), tallies how the payloads between
two markers ended (flush's result), and hands back exactly the unfinished payloads at stop.
"""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from interakt_logging._backlog import FlushMarker, FlushResult, MemoryBacklog
from interakt_logging._payload import Payload


def payloads(n: int, first: int = 0) -> list[Payload]:
    return [Payload("/v1/public/track/events/", b'{"n": %d}' % i, 0.0) for i in range(first, first + n)]


def take_all(backlog: MemoryBacklog) -> list[Payload]:
    taken = []
    while (payload := backlog.take(0)) is not None:
        taken.append(payload)
    return taken


def settle(backlog: MemoryBacklog, payload: Payload, delivered: bool = True) -> bool:
    """What a worker does once it knows the outcome."""
    return backlog.claim(payload) and backlog.finish(payload, delivered)


def test_markers_are_released_in_order_as_their_payloads_finish() -> None:
    backlog = MemoryBacklog(room=100)
    first, second = FlushMarker(), FlushMarker()
    backlog.put_batch(payloads(2))
    backlog.add_marker(first)
    backlog.put_batch(payloads(2, first=2))
    backlog.add_marker(second)
    a, b, c, d = take_all(backlog)
    settle(backlog, d)  # the newest finishing first releases nothing
    settle(backlog, b)
    assert not first.done.is_set() and not second.done.is_set()
    settle(backlog, a)
    assert first.done.is_set() and first.finished and not second.done.is_set()
    settle(backlog, c)
    assert second.done.is_set() and second.finished


def test_a_marker_with_nothing_before_it_is_released_at_once() -> None:
    backlog = MemoryBacklog(room=10)
    marker = FlushMarker()
    backlog.add_marker(marker)
    assert marker.done.is_set() and marker.finished
    assert backlog.result(marker, queued=0) == FlushResult()


def test_a_payload_waiting_for_a_retry_holds_its_marker() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(1))
    marker = FlushMarker()
    backlog.add_marker(marker)
    (payload,) = take_all(backlog)
    backlog.retry_later(payload, delay=3600)
    assert backlog.take(0) is None  # not due
    assert not marker.done.is_set()
    assert backlog.result(marker, queued=0) == FlushResult(pending=1)


def test_each_flush_counts_what_was_queued_since_the_previous_one() -> None:
    backlog = MemoryBacklog(room=100)
    backlog.put_batch(payloads(3))
    a, b, c = take_all(backlog)
    settle(backlog, a)
    settle(backlog, b, delivered=False)  # finished before the flush was even placed
    first = FlushMarker()
    backlog.add_marker(first)
    backlog.put_batch(payloads(2, first=3))
    second = FlushMarker()
    backlog.add_marker(second)
    d, e = take_all(backlog)
    settle(backlog, e)
    settle(backlog, d)
    assert not first.done.is_set()  # c is still out
    settle(backlog, c)
    assert backlog.result(first, queued=0) == FlushResult(delivered=2, failed=1)
    assert not backlog.result(first, queued=0)
    assert backlog.result(second, queued=0) == FlushResult(delivered=2)
    assert backlog.result(second, queued=0)


def test_payloads_the_listener_could_not_keep_count_as_failed_for_the_next_flush() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.count_failed(2)
    marker = FlushMarker()
    backlog.add_marker(marker)
    assert backlog.result(marker, queued=0) == FlushResult(failed=2)


def test_an_unplaced_marker_counts_what_is_ahead_of_it_as_pending() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(2))
    marker = FlushMarker(ahead=5)  # five items were ahead of it in the queue
    assert backlog.result(marker, queued=3) == FlushResult(pending=2 + 3)


def test_stop_returns_exactly_the_unfinished_split_by_whether_a_request_was_out() -> None:
    backlog = MemoryBacklog(room=100)
    backlog.put_batch(payloads(6))
    marker = FlushMarker()
    backlog.add_marker(marker)
    delivered, failed, retrying, sending, settling = (backlog.take(0) for _ in range(5))
    assert delivered and failed and retrying and sending and settling
    settle(backlog, delivered)
    settle(backlog, failed, delivered=False)
    backlog.retry_later(retrying, delay=3600)
    assert backlog.claim(settling)  # a worker is reporting its outcome right now
    unfinished = backlog.stop()
    never_taken = payloads(6)[5].body
    assert [p.body for p in unfinished.waiting] == [never_taken, retrying.body]
    assert unfinished.sending == [sending]
    assert marker.done.is_set() and not marker.finished
    assert backlog.result(marker, queued=0) == FlushResult(delivered=1, failed=1, pending=3)
    # The worker that was settling finishes normally; the others learn they were taken over.
    assert backlog.finish(settling, delivered=True)
    assert not backlog.claim(sending) and not backlog.finish(sending, delivered=True)
    assert backlog.take(0) is None and backlog.in_flight == 0 and len(backlog) == 0


def test_after_stop_new_batches_are_refused_and_markers_released() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(1))
    backlog.stop()
    refused = payloads(2, first=1)
    assert backlog.put_batch(refused) == refused  # the caller reports them
    late = FlushMarker()
    backlog.add_marker(late)
    assert late.done.is_set() and not late.finished
    assert backlog.result(late, queued=0) == FlushResult(pending=1)  # the one stop took back


def test_stop_taking_lets_requests_out_finish_normally() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(2))
    out = backlog.take(0)
    assert out is not None
    backlog.stop_taking()
    assert backlog.take(0) is None
    assert settle(backlog, out)
    assert backlog.finished_count == 1
    assert len(backlog.stop().waiting) == 1


def test_a_payload_taken_over_by_stop_is_never_counted_when_its_answer_comes() -> None:
    """The race between shutdown and a worker: whoever is first owns the outcome."""
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(1))
    (payload,) = take_all(backlog)
    assert backlog.stop().sending == [payload]
    assert not backlog.claim(payload)
    assert not backlog.finish(payload, delivered=True)
    assert backlog.finished_count == 0


@given(st.lists(st.sampled_from(["put", "take", "deliver", "fail", "retry", "marker"]), max_size=60))
def test_every_payload_is_finished_or_returned_by_stop_exactly_once(steps: list[str]) -> None:
    backlog = MemoryBacklog(room=1000)
    put = 0
    out: list[Payload] = []
    finished: list[Payload] = []
    markers: list[FlushMarker] = []
    for step in steps:
        if step == "put":
            backlog.put_batch(payloads(1, first=put))
            put += 1
        elif step == "take":
            payload = backlog.take(0)
            if payload is not None:
                out.append(payload)
        elif step in ("deliver", "fail") and out:
            payload = out.pop(0)
            assert settle(backlog, payload, delivered=step == "deliver")
            finished.append(payload)
        elif step == "retry" and out:
            backlog.retry_later(out.pop(0), delay=3600)
        elif step == "marker":
            marker = FlushMarker()
            backlog.add_marker(marker)
            markers.append(marker)
    unfinished = backlog.stop()
    returned = unfinished.waiting + unfinished.sending
    assert sorted(p.seq for p in finished + returned) == list(range(1, put + 1))
    assert backlog.finished_count == len(finished)
    for marker in markers:
        assert marker.done.is_set()
        result = backlog.result(marker, queued=0)
        assert result.pending == sum(1 for p in returned if p.seq <= marker.seq)
    covered = sum(m.delivered + m.failed for m in markers)
    assert covered == sum(1 for p in finished if markers and p.seq <= markers[-1].seq)


def test_stop_can_leave_requests_out_to_their_workers() -> None:
    """A close that is not the process's last word: requests out stay tracked, so their answers
    count; a later marker is done when they are all answered."""
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(3))
    first, second = backlog.take(0), backlog.take(0)
    assert first is not None and second is not None
    unfinished = backlog.stop(keep_sending=True)
    assert len(unfinished.waiting) == 1 and unfinished.sending == [first, second]
    marker = FlushMarker()
    backlog.mark_sending(marker)
    assert settle(backlog, first)
    assert not marker.done.is_set()
    assert settle(backlog, second, delivered=False)
    assert marker.done.is_set() and marker.finished
    assert backlog.stop() == ([], [])


def test_a_retry_after_stopping_strands_the_payload_for_the_next_stop() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(1))
    (payload,) = take_all(backlog)
    backlog.stop(keep_sending=True)
    marker = FlushMarker()
    backlog.mark_sending(marker)
    backlog.retry_later(payload, delay=1.0)  # nobody takes it any more
    assert marker.done.is_set() and not marker.finished
    assert backlog.result(marker, queued=0) == FlushResult(pending=1)
    assert backlog.stop().waiting == [payload]


def test_the_hooks_hear_of_a_stranded_request_and_of_the_last_answer() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(2))
    answered, stranded = take_all(backlog)
    heard: list[object] = []
    unfinished = backlog.stop(
        keep_sending=True, on_stranded=heard.append, on_idle=lambda: heard.append("idle")
    )
    assert unfinished.sending == [answered, stranded]
    backlog.retry_later(stranded, delay=1.0)
    assert heard == [stranded]
    assert settle(backlog, answered)
    assert heard == [stranded, "idle"]
    assert backlog.finished_count == 2


def test_no_hooks_when_nothing_is_left_out() -> None:
    backlog = MemoryBacklog(room=10)
    heard: list[object] = []
    backlog.stop(keep_sending=True, on_stranded=heard.append, on_idle=lambda: heard.append(1))
    assert backlog.on_stranded is None and backlog.on_idle is None and heard == []


def take_on_a_thread(backlog: MemoryBacklog, release: threading.Event) -> tuple[Payload, threading.Thread]:
    """A worker that takes one payload and then ends (when ``release`` is set) without
    finishing it, as a worker does when the pipeline stops before it sent."""
    taken: list[Payload] = []
    took = threading.Event()

    def work() -> None:
        payload = backlog.take(0)
        assert payload is not None
        taken.append(payload)
        took.set()
        release.wait(10)

    worker = threading.Thread(target=work)
    worker.start()
    assert took.wait(10)
    return taken[0], worker


def test_a_payload_whose_worker_ended_is_not_counted_as_sending() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(1))
    release = threading.Event()
    release.set()
    payload, worker = take_on_a_thread(backlog, release)
    worker.join(10)
    unfinished = backlog.stop(keep_sending=True)
    assert unfinished.waiting == [payload] and unfinished.sending == []


def test_reap_strands_what_a_worker_left_when_it_ended() -> None:
    backlog = MemoryBacklog(room=10)
    backlog.put_batch(payloads(1))
    release = threading.Event()
    payload, worker = take_on_a_thread(backlog, release)
    heard: list[object] = []
    unfinished = backlog.stop(
        keep_sending=True, on_stranded=heard.append, on_idle=lambda: heard.append("idle")
    )
    assert unfinished.sending == [payload]  # its worker was alive: a request may be out
    backlog.reap()
    assert heard == []
    release.set()
    worker.join(10)
    backlog.reap()
    assert heard == [payload, "idle"]
