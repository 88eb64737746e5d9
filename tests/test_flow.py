"""Flow control, pacing, the in-flight window and delivery on their own: no sockets, no sleeps.

A fake clock drives everything, so the breaker's schedule, the pace after a 429 and the window's
growth are checked exactly.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, List, Optional, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interakt_logging import APIError, DeliveryError
from interakt_logging._concurrency import InFlightWindow
from interakt_logging._delivery import Delivered, Delivery, TryAgain
from interakt_logging._flow import CLOSED, HALF_OPEN, OPEN, FlowControl, Permit, Wait
from interakt_logging._pacing import MIN_RATE, AdaptivePace, TokenBucket
from interakt_logging._payload import EVENTS_PATH, Payload
from interakt_logging._shared_limit import Reservation
from interakt_logging._stats import Counters
from interakt_logging._transport import MAX_RETRY_AFTER, NetworkError, parse_retry_after
from interakt_logging.testing import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_flow(clock: FakeClock, **kwargs: Any) -> FlowControl:
    kwargs.setdefault("jitter", lambda: 1.0)
    return FlowControl(clock=clock, **kwargs)


# -- the breaker ---------------------------------------------------------------------------------

def test_breaker_schedule_doubles_to_its_cap_and_one_answer_closes_it() -> None:
    clock = FakeClock()
    flow = make_flow(clock, failure_threshold=2, probe_delay=0.5, max_probe_delay=2.0)
    for counts in (True, False):  # the second failure opens it: that one is not the payload's
        assert flow.poll() is Permit.REQUEST
        assert flow.failed(clock(), probe=False, timed_out=False) is counts
    assert flow.state == OPEN
    for delay in (0.5, 1.0, 2.0, 2.0):
        assert flow.poll() == Wait(delay)
        clock.advance(delay - 0.001)
        assert isinstance(flow.poll(), Wait)
        clock.advance(0.001)
        assert flow.poll() is Permit.PROBE
        assert flow.state == HALF_OPEN
        assert flow.poll() == Wait(None)  # one probe at a time; its outcome wakes the others
        assert flow.failed(clock(), probe=True, timed_out=False) is False
    clock.advance(2.0)
    assert flow.poll() is Permit.PROBE
    flow.answered(accepted=False)  # any answer, even a 4xx, says the server is up
    assert flow.state == CLOSED
    assert flow.poll() is Permit.REQUEST
    flow.failed(clock(), probe=False, timed_out=False)
    flow.failed(clock(), probe=False, timed_out=False)
    assert flow.poll() == Wait(0.5)  # closing reset the schedule


def test_a_probe_that_ends_without_an_answer_leaves_room_for_another() -> None:
    """Regression: a probe whose post raised (a failing part, no answer) or that gave up
    waiting for its shared slot left the breaker half-open, and every sender then waited for
    an outcome that never came: nothing was sent until close. Reproduced 1/1 before the fix."""
    clock = FakeClock()
    flow = make_flow(clock, failure_threshold=1, probe_delay=0.5)
    assert flow.poll() is Permit.REQUEST
    flow.failed(clock(), probe=False, timed_out=False)  # opens
    clock.advance(0.5)
    assert flow.poll() is Permit.PROBE
    flow.released(probe=True)  # no answer: nothing learned about the server
    assert flow.state == OPEN and flow.in_flight == 0
    assert flow.poll() is Permit.PROBE  # another probe goes at once


def test_a_failing_part_during_a_probe_does_not_stall_delivery() -> None:
    poster = ScriptedPoster(NetworkError("ConnectionError", "refused"), RuntimeError("bug"))
    delivery, _ = make_delivery(poster, max_retries=5)
    delivery.flow = make_flow(poster.clock, failure_threshold=1, probe_delay=0.0)
    assert isinstance(delivery.attempt(payload()), TryAgain)  # opens the breaker
    with pytest.raises(RuntimeError):
        delivery.attempt(payload())  # the probe: a failing part, no answer
    assert delivery.flow.poll() is Permit.PROBE


def test_failures_while_open_do_not_use_up_retries() -> None:
    clock = FakeClock()
    flow = make_flow(clock, failure_threshold=1, max_in_flight=4)
    assert flow.poll() is Permit.REQUEST
    assert flow.poll() is Permit.REQUEST
    assert flow.failed(clock(), probe=False, timed_out=False) is False  # opens
    assert flow.failed(clock(), probe=False, timed_out=False) is False  # already open


def test_a_retry_after_pauses_everyone_and_a_deadline_ends_the_wait() -> None:
    clock = FakeClock()
    flow = make_flow(clock)
    assert flow.poll() is Permit.REQUEST
    flow.throttled(clock(), retry_after=2.0)
    assert flow.poll() == Wait(2.0)
    assert flow.state == CLOSED  # a 429 is an answer: the server is up
    assert flow.acquire(deadline=clock()) is Permit.STOPPED
    clock.advance(2.0)
    assert flow.poll() is Permit.REQUEST
    flow.stop()
    assert flow.poll() is Permit.STOPPED


# -- pacing --------------------------------------------------------------------------------------

def test_rate_limit_spaces_requests_strictly() -> None:
    clock = FakeClock()
    flow = make_flow(clock, rate_limit=10, max_in_flight=100)
    assert flow.pace == 10
    assert flow.poll() is Permit.REQUEST
    assert flow.poll() == Wait(pytest.approx(0.1), for_pace=True)
    clock.advance(0.1)
    assert flow.poll() is Permit.REQUEST


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 500), steps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_a_token_bucket_never_exceeds_its_rate_in_any_window(rate: float, steps: List[float]) -> None:
    """However the takes are timed, no 1 s window holds more than rate + 1 of them (one token of
    capacity: no burst into a sliding-window limit)."""
    now = 0.0
    bucket = TokenBucket(rate, now)
    taken: List[float] = []
    for step in steps:
        now += step
        wait = bucket.take(now)
        if wait == 0.0:
            taken.append(now)
        else:
            assert wait > 0
            now += wait
            assert bucket.take(now) == 0.0
            taken.append(now)
    for i, start in enumerate(taken):
        within = [t for t in taken[i:] if t < start + 1.0]
        assert len(within) <= rate + 1 + 1e-9


def accept(pace: AdaptivePace, clock: FakeClock, count: int, spacing: float) -> None:
    for _ in range(count):
        assert pace.take(clock()) == 0.0
        pace.accepted(clock())
        clock.advance(spacing)


def test_a_429_paces_the_process_just_below_the_rate_it_was_accepted() -> None:
    clock = FakeClock()
    pace = AdaptivePace(None, clock())
    accept(pace, clock, 20, 0.045)  # 20 accepted over the last second
    assert pace.rate is None  # unpaced until the first 429
    assert pace.throttled(clock(), clock())
    assert pace.rate == pytest.approx(0.85 * 20)
    clock.advance(0.5)
    assert not pace.throttled(clock(), clock())  # within the round: once per round
    clock.advance(0.6)
    assert not pace.throttled(clock() - 2, clock())  # sent before the cut: old news


def test_after_a_cut_the_pace_climbs_back_then_probes_higher() -> None:
    clock = FakeClock()
    pace = AdaptivePace(None, clock())
    accept(pace, clock, 10, 0.09)  # 10 accepted in the last second
    pace.throttled(clock(), clock())
    rates = []
    for _ in range(80):  # accepted calls, as fast as the pace allows
        wait = pace.take(clock())
        clock.advance(wait)
        if wait:
            assert pace.take(clock()) == 0.0
        pace.accepted(clock())
        assert pace.rate is not None
        rates.append(pace.rate)
    assert rates == sorted(rates)  # never down while accepted
    assert 8.5 <= rates[0] < 9  # 85% of what was accepted
    assert rates[-1] > 11  # back to the share in 2 s, then above it


def test_when_nothing_was_accepted_the_pace_drops_to_the_minimum_and_climbs_back() -> None:
    clock = FakeClock()
    pace = AdaptivePace(10, clock())  # rate_limit=10; others took the whole window
    pace.throttled(clock(), clock())
    assert pace.rate == MIN_RATE
    clock.advance(2.0)
    pace.take(clock())
    pace.accepted(clock())
    assert pace.rate == pytest.approx(2.0)  # towards 8.5, capped at twice what was sent
    for _ in range(5):
        clock.advance(1.0)
        pace.throttled(clock(), clock())
    assert pace.rate == MIN_RATE  # never below: a throttled process still probes now and then


def test_a_retry_after_pauses_without_cutting_the_pace() -> None:
    """The server said when: follow it rather than guess (stray 429s cost nothing)."""
    clock = FakeClock()
    flow = make_flow(clock)
    assert flow.poll() is Permit.REQUEST
    flow.throttled(clock(), retry_after=0.0)
    assert flow.pace is None and flow.poll() is Permit.REQUEST


def test_the_pace_never_exceeds_rate_limit() -> None:
    clock = FakeClock()
    pace = AdaptivePace(5, clock())
    accept(pace, clock, 5, 0.2)
    pace.throttled(clock(), clock())
    for _ in range(100):
        clock.advance(pace.take(clock()))
        pace.take(clock())
        pace.accepted(clock())
    assert pace.rate == 5


# -- the window of requests in flight ------------------------------------------------------------

def test_the_window_grows_while_full_and_shrinks_once_per_round() -> None:
    window = InFlightWindow(ceiling=10, start=2)
    for _ in range(2):
        window.started()
    assert not window.has_room()
    window.ended(accepted=True)  # full when it ended: slow start adds one
    assert window.limit == 3
    window.ended(accepted=True)  # not full any more: no growth
    assert window.limit == 3
    for _ in range(3):
        window.started()
    assert window.congested(sent_at=1.0, now=2.0)
    assert window.limit == 2  # 3 * 0.75
    assert not window.congested(sent_at=1.5, now=2.1)  # sent before the shrink
    assert window.limit == 2
    window.started()
    window.started()
    window.ended(accepted=True)  # after a shrink, one per window's worth of answers
    assert window.limit == 2  # 2.25 + 1 / 2.25
    window.ended(accepted=False)
    window.ended(accepted=False)
    assert window.in_flight == 0 and window.limit == 2


def test_the_window_stays_within_one_and_its_ceiling() -> None:
    window = InFlightWindow(ceiling=3)
    assert window.limit == 3
    for _ in range(10):
        window.started()
        window.started()
        window.started()
        for _ in range(3):
            window.ended(accepted=True)
    assert window.limit == 3
    for i in range(10):
        window.started()
        window.congested(sent_at=float(i), now=float(i) + 0.5)
    assert window.limit == 1


# -- delivery ------------------------------------------------------------------------------------

Script = Union[Exception, Any]


class ScriptedPoster:
    """Answers posts from a script: an exception is raised, anything else returned. Each round
    trip takes ``round_trip`` seconds of the fake clock (so a pace never makes acquire wait)."""

    def __init__(self, *script: Script, round_trip: float = 2.0) -> None:
        self.script = list(script)
        self.clock = FakeClock()
        self.round_trip = round_trip

    def post(self, payload: Payload) -> Any:
        self.clock.advance(self.round_trip)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def make_delivery(poster: ScriptedPoster, max_retries: int = 1) -> tuple[Delivery, Counters]:
    counters = Counters()
    flow = make_flow(poster.clock, max_in_flight=4)
    return Delivery(poster, flow, counters, max_retries), counters


def payload() -> Payload:
    return Payload(EVENTS_PATH, b'{"userId":"42","event":"x"}', 0.0)


def test_429s_never_use_up_the_retries() -> None:
    throttled = APIError(429, "Rate limit exceeded for this resource")
    poster = ScriptedPoster(*[throttled] * 10, {"result": True})
    delivery, counters = make_delivery(poster, max_retries=0)
    item = payload()
    for _ in range(10):
        result = delivery.attempt(item)
        assert isinstance(result, TryAgain) and result.throttled and result.delay == 0.0
    assert delivery.attempt(item) == Delivered({"result": True})
    assert item.attempts == 0
    assert counters.snapshot()["throttled"] == 10 and counters.snapshot()["retried"] == 0
    assert delivery.flow.pace is not None  # and the process now paces itself


def test_5xx_and_network_errors_use_up_the_retries_then_raise() -> None:
    poster = ScriptedPoster(APIError(503, "busy"), NetworkError("ReadTimeout", "slow"))
    delivery, counters = make_delivery(poster, max_retries=1)
    item = payload()
    first = delivery.attempt(item)
    assert isinstance(first, TryAgain) and not first.throttled and first.delay > 0
    with pytest.raises(DeliveryError, match="gave up after 1 retries"):
        delivery.attempt(item)
    assert counters.snapshot()["retried"] == 1


def test_a_final_4xx_raises_at_once() -> None:
    delivery, _ = make_delivery(ScriptedPoster(APIError(400, "bad")))
    with pytest.raises(APIError):
        delivery.attempt(payload())
    assert delivery.flow.in_flight == 0


def test_a_failing_part_frees_the_slot_it_held() -> None:
    """Regression: a post that raised something else than an answer kept its slot in flight,
    and once all were leaked nothing was sent any more."""
    delivery, _ = make_delivery(ScriptedPoster(*[RuntimeError("bug")] * 10))
    for _ in range(10):
        with pytest.raises(RuntimeError):
            delivery.attempt(payload())
    assert delivery.flow.in_flight == 0


def test_sync_send_gives_up_on_429s_past_max_retries_without_a_deadline() -> None:
    """A blocked caller must not wait forever: there 429s past max_retries raise."""
    throttled = APIError(429, "Rate limit exceeded for this resource")
    delivery, _ = make_delivery(ScriptedPoster(throttled, throttled, {"ok": 1}), max_retries=1)
    with pytest.raises(APIError):
        delivery.send(payload())


# -- a schedule shared between processes (Redis), stood in for -----------------------------------

class SharedStandIn:
    """Answers ``reserve`` from a list, as ``_shared_limit.SharedLimit`` would."""

    def __init__(self, *answers: Optional[Reservation]) -> None:
        self.answers = list(answers)
        self.asked = 0

    def reserve(self) -> Optional[Reservation]:
        self.asked += 1
        return self.answers.pop(0)


def test_a_shared_schedule_is_asked_until_it_holds_a_slot() -> None:
    shared = SharedStandIn(Reservation(0.0, held=False), Reservation(0.0, held=True))
    flow = FlowControl(shared=shared)
    assert flow.acquire() is Permit.REQUEST and shared.asked == 2


def test_an_unreachable_schedule_leaves_the_decision_to_the_process() -> None:
    flow = FlowControl(rate_limit=5, shared=SharedStandIn(None))
    assert flow.acquire() is Permit.REQUEST


def test_stopping_while_waiting_for_a_shared_slot_gives_the_slot_in_flight_back() -> None:
    shared = SharedStandIn(Reservation(60.0, held=True))
    flow = FlowControl(shared=shared)
    permits: List[Permit] = []
    waiter = threading.Thread(target=lambda: permits.append(flow.acquire()))
    waiter.start()
    wait_until(lambda: shared.asked == 1, lambda: "the schedule was not asked")
    flow.stop()
    waiter.join(10)
    assert permits == [Permit.STOPPED] and flow.in_flight == 0


def test_a_sender_waiting_for_its_shared_slot_does_not_swallow_a_freed_slots_wake_up() -> None:
    """Regression: senders sleeping until their shared slot waited on the same condition as
    senders waiting for a slot in the window, and an answer wakes one waiter only: the sleeper
    took the wake-up (and slept on) while the sender it was meant for slept until some later
    answer. Reproduced 1/1 before the fix (the second acquire stayed blocked)."""
    shared = SharedStandIn(Reservation(60.0, held=True), Reservation(0.0, held=True),
                           Reservation(0.0, held=True))
    flow = FlowControl(max_in_flight=2, shared=shared)
    sleeper = threading.Thread(target=flow.acquire, daemon=True)
    sleeper.start()  # holds one of the two slots, sleeping until its shared slot
    wait_until(lambda: shared.asked == 1 and flow.in_flight == 1, lambda: "no sleeper")
    assert flow.acquire() is Permit.REQUEST  # the second slot: the window is full now
    granted = threading.Event()
    waiter = threading.Thread(target=lambda: (flow.acquire(), granted.set()), daemon=True)
    waiter.start()  # waits for a slot, behind the sleeper
    wait_until(lambda: _blocked_in_wait(waiter), lambda: "the waiter is not waiting")
    flow.answered(accepted=True)  # frees a slot: the waiter must get it
    try:
        assert granted.wait(5), "the sender waiting for a slot was never woken"
    finally:
        flow.stop()
        sleeper.join(10)
        waiter.join(10)


def _blocked_in_wait(thread: threading.Thread) -> bool:
    """The thread is blocked in a Condition's wait (its innermost Python frame)."""
    frame = sys._current_frames().get(thread.ident or 0)
    return frame is not None and frame.f_code.co_name == "wait"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.floats().map(str), st.integers().map(str)))
def test_a_retry_after_is_never_trusted_past_its_cap(value: str) -> None:
    """The reliability page's promise: a Retry-After pauses every worker, capped at 60 s; a
    value that is no delay (garbage, NaN, a past date) is ignored or no wait at all."""
    seconds = parse_retry_after(value)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER == 60.0
    assert parse_retry_after("3600") == MAX_RETRY_AFTER and parse_retry_after("-5") == 0.0


def test_the_pace_is_logged_without_holding_the_lock_every_sender_needs() -> None:
    """Regression: the pace's debug line was logged while flow control held its lock, so an
    app's slow (or waiting) handler for the library's logger stalled every sender; one that
    waited for a sender deadlocked. Reproduced 1/1 before the fix (the other poll blocked)."""
    clock = FakeClock()
    flow = make_flow(clock)
    polled: List[bool] = []

    class WaitsForASender(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "pace" in record.getMessage():
                other = threading.Thread(target=flow.poll, daemon=True)
                other.start()
                other.join(5)
                polled.append(not other.is_alive())

    library = logging.getLogger("interakt_logging")
    handler, level = WaitsForASender(), library.level
    library.addHandler(handler)
    library.setLevel(logging.DEBUG)
    try:
        assert flow.poll() is Permit.REQUEST
        flow.throttled(clock(), retry_after=None)  # the first 429 sets a pace, and says so
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
    assert polled == [True]
