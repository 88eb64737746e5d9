"""Side-by-side benchmark of interakt-logging against the original SDK (issue 5).

    pip install -e ".[bench]"        # adds interakt-track-python 1.0.7, the original SDK
    pip install -e ".[redis]"        # and a redis-server on PATH: the shared-limiter row
    python bench/run.py              # full run, about 12 minutes on 2 cores
    python bench/run.py --only-rate  # only the round-trip sweep and the shared rate limit
    python bench/run.py --quick      # tiny N: checks that everything runs (the smoke test)

Everything runs in this one process, in interleaved rounds, except the loopback Track API look-
alikes (``MockInteraktServer`` at 20 ms latency, and one that never answers), which run in child
processes so that their CPU stays out of the measurements; the exit-drain row, which times a
child process that logs and exits; and the shared-rate-limit rows, whose processes are children
sharing one rate-limited mock (and, for one row, a throwaway redis-server). It prints a Markdown
report: medians, the ratios the targets are about, and whether each is met. Rows of the
original SDK are skipped with a note when it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import logging.handlers
import os
import platform
import queue
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Tuple

from interakt_logging import InteraktHandler
from interakt_logging import track as our_track
from interakt_logging.testing import redis_server, wait_until

API_KEY = "bench-key"
LATENCY = 0.020
TRAITS_ORDER = "CUS001"


@dataclass
class Sizes:
    rounds: int = 9  # interleaved rounds of the caller-cost rows
    calls: int = 20_000  # calls per variant per round
    deliver: int = 300  # events per delivery round (rows 3 and 4)
    deliver_rounds: int = 3
    queued: int = 10_000  # row 5
    drain: int = 1_000  # row 6
    drain_rounds: int = 3
    rate_cases: str = "full"  # the shared-rate-limit cases: "full", or "quick" (two tiny ones)
    sweep: int = 600  # events per round-trip sweep point (ours)
    sweep_seconds: float = 6.0  # the original SDK's share of a sweep point: 1 request at a time
    sweep_latencies: Tuple[float, ...] = (0.02, 0.15, 0.3)


QUICK = Sizes(rounds=2, calls=200, deliver=20, deliver_rounds=1, queued=500, drain=50,
              drain_rounds=1, rate_cases="quick", sweep=20, sweep_seconds=0.3,
              sweep_latencies=(0.02,))


# -- loopback servers in child processes ---------------------------------------------------------

class ServerProcess:
    """A MockInteraktServer in a child process, driven over stdin/stdout with one-line commands."""

    def __init__(
        self, latency: float = 0.0, hang: bool = False, rate_limit: Optional[float] = None
    ) -> None:
        args = [sys.executable, __file__, "--serve", str(latency)] + (["--hang"] if hang else [])
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"the bench server did not start: {self.url!r}")

    def _ask(self, command: str) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._proc.stdout.readline().strip()

    def count(self, event: str) -> int:
        """How many events named ``event`` the server has accepted."""
        return int(self._ask(f"count {event}"))

    def tally(self, event: str) -> Tuple[int, int]:
        """(accepted, answered 429) requests for events named ``event``."""
        accepted, throttled = self._ask(f"tally {event}").split()
        return int(accepted), int(throttled)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


def serve(latency: float, hang: bool, rate_limit: Optional[float]) -> None:
    """Child process: run the mock server until stdin closes; answer ``count NAME`` and
    ``tally NAME`` lines."""
    from interakt_logging.testing import MockInteraktServer

    mock = MockInteraktServer(latency=latency, rate_limit=rate_limit)
    mock.hang = hang
    mock.start()
    print(mock.url, flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "count":
            print(len(mock.events(arg)), flush=True)
        elif command == "tally":
            named = [r for r in list(mock.requests) if (r.body or {}).get("event") == arg]
            throttled = sum(1 for r in named if r.status == 429)
            print(len(mock.events(arg)), throttled, flush=True)
    mock.stop()


# -- the subjects --------------------------------------------------------------------------------

def quiet_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


class Collect(logging.Handler):
    """Keeps the libraries' own warnings out of the report (they are summarised at the end)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def original_sdk() -> Optional[ModuleType]:
    try:
        import track
    except ImportError:
        return None
    return track


def start_original(track: ModuleType, url: str, **settings: Any) -> Any:
    """A fresh default client of the original SDK, configured the way its users do it."""
    track.default_client = None
    track.api_key = API_KEY
    track.host = url
    track.max_queue_size = settings.get("max_queue_size", 10_000)
    track.max_retries = settings.get("max_retries", 3)
    track.on_error = settings.get("on_error")
    track.event(user_id="42", event="warm-up", traits={})
    return track.default_client


def stop_original(track: ModuleType, client: Any, drain: bool) -> None:
    if drain:
        client.flush()
    client.join()  # stops the consumer after its current request; the rest stays queued
    track.default_client = None


def park_original(track: ModuleType, client: Any, results: Results) -> None:
    """Stop a client whose consumer hangs on the never-answering server: it ends once that
    server is gone (max_retries=0), so it is joined then."""
    client.consumer.pause()
    track.default_client = None
    results.after_hang.append(client.join)


def start_facade(url: str, max_queue_size: int) -> InteraktHandler:
    """Configured like the original: module attributes, read when the first call builds it."""
    stop_facade()
    our_track.api_key = API_KEY
    our_track.host = url
    our_track.max_queue_size = max_queue_size
    our_track.event(user_id="42", event="warm-up", traits={})
    client = our_track.default_client
    assert client is not None
    wait_sending(client)
    return client


def stop_facade() -> None:
    """Drop the facade's client without draining (what is left is reported lost)."""
    client = our_track.default_client
    if client is not None:
        client.close(timeout=0)
    our_track.shutdown()


# -- rows 1 and 2: cost on the calling thread ----------------------------------------------------

Loop = Callable[[int], int]  # runs n calls, returns the calling thread's CPU ns


def tagged(log: logging.Logger) -> Loop:
    info = log.info

    def run(n: int) -> int:
        started = time.thread_time_ns()
        for _ in range(n):
            info("Order Placed", extra={"interakt_event": {
                "user_id": "42", "traits": {"orderNumber": TRAITS_ORDER}}})
        return time.thread_time_ns() - started

    return run


def untagged(log: logging.Logger) -> Loop:
    info = log.info

    def run(n: int) -> int:
        started = time.thread_time_ns()
        for _ in range(n):
            info("GET /health 200")
        return time.thread_time_ns() - started

    return run


def module_event(event: Callable[..., Any], drops: List[int]) -> Loop:
    """``track.event`` returns (queued, message) in both SDKs; count the refusals as drops."""

    def run(n: int) -> int:
        refused = 0
        started = time.thread_time_ns()
        for _ in range(n):
            if not event(user_id="42", event="Order Placed",
                         traits={"orderNumber": TRAITS_ORDER})[0]:
                refused += 1
        elapsed = time.thread_time_ns() - started
        drops.append(refused)
        return elapsed

    return run


def wait_sending(handler: InteraktHandler) -> None:
    """Until the sender threads run and one request is out (to the server that never answers)."""
    wait_until(lambda: handler.stats()["in_flight"] >= 1,
               lambda: f"the sender did not start: {handler.stats()}", 10)


@dataclass
class Results:
    per_call: Dict[str, List[float]] = field(default_factory=dict)  # µs per call, per round
    notes: List[str] = field(default_factory=list)
    rows: List[Tuple[str, str, str, str, str, str, str]] = field(default_factory=list)
    after_hang: List[Callable[[], None]] = field(default_factory=list)  # once it is closed
    sections: List[str] = field(default_factory=list)  # whole Markdown blocks, in order


def caller_cost(sizes: Sizes, hanging: ServerProcess, results: Results) -> None:
    """The senders run, each with a request out to a server that never answers, so they queue
    everything and no sending CPU (that is row 4) competes with the calling thread."""
    big = 2 * sizes.calls + 10_000  # room for every batch: no drop can flatter us
    ours = InteraktHandler(api_key=API_KEY, host=hanging.url, max_queue_size=big)
    ours_log = quiet_logger("bench.ours", ours)
    ours_log.info("warm-up", extra={"interakt_event": {"user_id": "42"}})
    wait_sending(ours)
    stdlib = logging.handlers.QueueHandler(queue.Queue())
    queues: List[Any] = [ours.queue, stdlib.queue]  # emptied between batches
    variants: Dict[str, Loop] = {
        "ours tagged": tagged(ours_log),
        "stdlib QueueHandler tagged": tagged(quiet_logger("bench.stdlib", stdlib)),
        "NullHandler untagged (floor)": untagged(quiet_logger("bench.null", logging.NullHandler())),
        "NullHandler tagged": tagged(quiet_logger("bench.nulltagged", logging.NullHandler())),
        "ours untagged": untagged(quiet_logger("bench.oursuntagged", ours)),
    }
    original_drops: List[int] = []
    facade_drops: List[int] = []
    track = original_sdk()
    original = None
    if track is None:
        results.notes.append("original SDK not installed (pip install -e '.[bench]'): "
                             "its rows are skipped")
    else:
        original = start_original(track, hanging.url, max_queue_size=big, max_retries=0,
                                  on_error=lambda error, message: None)
        wait_until(lambda: original.queue.qsize() == 0,  # its consumer has the warm-up
                   lambda: "the original SDK's consumer did not take the warm-up", 10)
        queues.append(original.queue)
        variants["original track.event"] = module_event(track.event, original_drops)
    facade = start_facade(hanging.url, big)
    variants["our track.event facade"] = module_event(our_track.event, facade_drops)
    queues.append(facade.queue)

    names = list(variants)
    per_call: Dict[str, List[float]] = {name: [] for name in names}
    for name in names:  # warm every path once (imports, caches, first connections)
        variants[name](min(200, sizes.calls))
    for round_no in range(sizes.rounds):
        order = names[round_no % len(names):] + names[:round_no % len(names)]
        if round_no % 2:
            order.reverse()
        for name in order:
            for q in queues:
                empty(q)
            gc.collect()
            per_call[name].append(variants[name](sizes.calls) / sizes.calls / 1000)
    results.per_call = per_call

    ours_stats = ours.stats()
    facade_stats = facade.stats()
    results.notes.append(
        "caller rows (1, 2): CPU time of the calling thread (time.thread_time) per call, so "
        "other load on the machine does not count; every sender is running, with one request "
        "out to a server that never answers, so no sending competes with the caller (row 4 "
        "counts the sending); queues are emptied between batches"
    )
    results.notes.append(
        f"caller rows: ours dropped {ours_stats['dropped']} and failed {ours_stats['failed']} "
        f"of {ours_stats['enqueued']} queued (max_queue_size={big}); the original refused "
        f"{sum(original_drops)}; the facade refused {sum(facade_drops)} (facade handler: "
        f"dropped {facade_stats['dropped']}, failed {facade_stats['failed']})"
    )
    ours.close(timeout=0)  # what is still queued is reported lost, out of the measurement
    if track is not None and original is not None:
        park_original(track, original, results)
    stop_facade()

    floor = "NullHandler untagged (floor)"
    add_ratio(results, "1", "tagged logger.info, InteraktHandler",
              per_call, "ours tagged", "stdlib QueueHandler tagged", "µs", "<= 0.6x")
    add_ratio(results, "1", "tagged logger.info, InteraktHandler",
              per_call, "ours tagged", floor, "µs", "<= 1.6x")
    add_ratio(results, "1", "track.event: our facade",
              per_call, "our track.event facade", "original track.event", "µs", "<= 1.0x")
    add_ratio(results, "2", "untagged logger.info, InteraktHandler on the logger",
              per_call, "ours untagged", floor, "µs", "<= 1.05x")
    add_ratio(results, "-", "(info) tagged logger.info, InteraktHandler",
              per_call, "ours tagged", "NullHandler tagged", "µs", "")
    add_ratio(results, "-", "(info) tagged logger.info, InteraktHandler",
              per_call, "ours tagged", "original track.event", "µs", "")


def empty(q: Any) -> None:
    """Bench-only: forget what a batch queued (its sender is stuck on the server that never
    answers), so every batch starts from the same heap; row 5 measures what queued items cost."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
        if hasattr(q, "task_done"):
            q.task_done()


def add_ratio(
    results: Results, row: str, what: str, values: Dict[str, List[float]], ours: str, base: str,
    unit: str, target: str, higher_is_better: bool = False,
) -> None:
    if not values.get(ours):
        results.rows.append((row, what, "skipped", base, "", target, "-"))
        return
    if not values.get(base):
        median = statistics.median(values[ours])
        results.rows.append((row, what, f"{median:.3g} {unit}", f"{base}: skipped", "", target,
                             "-"))
        return
    ratios = [a / b for a, b in zip(values[ours], values[base])]
    ratio = statistics.median(ratios)
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    met = "-"
    if target:
        limit = float(target.split()[1].rstrip("x"))
        ok = ratio >= limit if higher_is_better else ratio <= limit
        met = "yes" if ok else "**no**"
    results.rows.append((
        row, what, f"{statistics.median(values[ours]):.3g} {unit}",
        f"{base}: {statistics.median(values[base]):.3g} {unit}",
        f"{ratio:.2f}x{spread}", target, met,
    ))


# -- rows 3 and 4: delivery rate and CPU per delivered event ------------------------------------

def deliver_ours(
    server: ServerProcess, n: int, name: str, **settings: Any
) -> Tuple[float, float, str]:
    handler = InteraktHandler(api_key=API_KEY, host=server.url, **settings)
    log = quiet_logger("bench.deliver", handler)
    log.info("warm-up", extra={"interakt_event": {"user_id": "42"}})
    handler.flush(10)
    extra = {"interakt_event": {"user_id": "42", "traits": {"orderNumber": TRAITS_ORDER}}}
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        log.info(name, extra=extra)
    finished = handler.flush(600)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = handler.stats()
    handler.close()
    arrived = server.count(name)
    problem = "" if finished and arrived == n and stats["dropped"] == stats["failed"] == 0 else (
        f"ours: {arrived}/{n} arrived, stats {stats}"
    )
    return n / wall, cpu / n * 1e6, problem


def deliver_original(
    track: ModuleType, server: ServerProcess, n: int, name: str
) -> Tuple[float, float, str]:
    client = start_original(track, server.url)
    client.flush()
    traits = {"orderNumber": TRAITS_ORDER}
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        track.event(user_id="42", event=name, traits=traits)
    client.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop_original(track, client, drain=True)
    arrived = server.count(name)
    problem = "" if arrived == n else f"original: {arrived}/{n} arrived"
    return n / wall, cpu / n * 1e6, problem


def delivery(sizes: Sizes, server: ServerProcess, results: Results) -> None:
    rate: Dict[str, List[float]] = {"ours": [], "original": [], "ours, workers=16": []}
    cpu: Dict[str, List[float]] = {"ours": [], "original": [], "ours, workers=16": []}
    track = original_sdk()
    for round_no in range(sizes.deliver_rounds):
        runs: List[Tuple[str, Callable[[], Tuple[float, float, str]]]] = [
            ("ours", lambda r=round_no: deliver_ours(server, sizes.deliver, f"ours-{r}")),
            ("ours, workers=16", lambda r=round_no: deliver_ours(
                server, sizes.deliver, f"ours16-{r}", workers=16)),
        ]
        if track is not None:
            runs.append(("original", lambda r=round_no: deliver_original(
                track, server, sizes.deliver, f"original-{r}")))
        if round_no % 2:
            runs.reverse()
        for who, run in runs:
            gc.collect()
            per_second, cpu_us, problem = run()
            rate[who].append(per_second)
            cpu[who].append(cpu_us)
            if problem:
                results.notes.append(f"delivery round {round_no}: {problem}")
    add_ratio(results, "3", f"events/s delivered at {LATENCY * 1000:.0f} ms, default settings",
              rate, "ours", "original", "/s", ">= 10x", higher_is_better=True)
    add_ratio(results, "4", "CPU µs per delivered event (process time)",
              cpu, "ours", "original", "µs", "<= 0.5x")
    add_ratio(results, "-", "(info) events/s delivered at 20 ms, workers=16",
              rate, "ours, workers=16", "original", "/s", "")
    add_ratio(results, "-", "(info) CPU µs per delivered event, workers=16",
              cpu, "ours, workers=16", "original", "µs", "")


# -- row 5: memory per queued event --------------------------------------------------------------

def measure_memory(queue_events: Callable[[], None], settled: Callable[[], bool]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queue_events()
        wait_until(settled, lambda: "the queued events did not settle", 10)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def memory(sizes: Sizes, hanging: ServerProcess, results: Results) -> None:
    """Queued behind a server that never answers: nothing leaves, everything stays queued."""
    n = sizes.queued
    values: Dict[str, List[float]] = {}
    handler = InteraktHandler(api_key=API_KEY, host=hanging.url, max_queue_size=2 * n)
    log = quiet_logger("bench.memory", handler)
    log.info("warm-up", extra={"interakt_event": {"user_id": "42"}})
    wait_sending(handler)

    def queue_ours() -> None:
        for i in range(n):
            log.info("Order Placed", extra={"interakt_event": {
                "user_id": str(i), "traits": {"orderNumber": TRAITS_ORDER}}})

    def ours_settled() -> bool:
        stats = handler.stats()
        # each sender thread holds one payload (requests out, or waiting for a slot)
        return bool(stats["in_flight"] == stats["sender_threads"]
                    and stats["queue_depth"] + stats["in_flight"] == n + 1)

    values["ours"] = [measure_memory(queue_ours, ours_settled) / n]
    stats = handler.stats()
    if stats["dropped"] or stats["queue_depth"] + stats["in_flight"] != n + 1:
        results.notes.append(f"memory row: ours did not hold all {n} events: {stats}")
    handler.close(timeout=0)

    track = original_sdk()
    if track is not None:
        client = start_original(track, hanging.url, max_queue_size=2 * n, max_retries=0,
                                on_error=lambda error, message: None)
        wait_until(lambda: client.queue.qsize() == 0,  # its consumer has the warm-up
                   lambda: "the original SDK's consumer did not take the warm-up", 10)

        def queue_original() -> None:
            for i in range(n):
                track.event(user_id=str(i), event="Order Placed",
                            traits={"orderNumber": TRAITS_ORDER})

        values["original"] = [
            measure_memory(queue_original, lambda: client.queue.qsize() == n) / n
        ]
        park_original(track, client, results)
    results.rows.append((
        "5", f"bytes per queued event, {n:,} queued (tracemalloc)",
        f"{values['ours'][0]:.0f} B", _base_text("original", values, "B"), _ratio_text(values),
        "<= 1 KB", "yes" if values["ours"][0] <= 1024 else "**no**",
    ))


def _base_text(base: str, values: Dict[str, List[float]], unit: str) -> str:
    return f"{base}: {values[base][0]:.0f} {unit}" if base in values else f"{base}: skipped"


def _ratio_text(values: Dict[str, List[float]]) -> str:
    if "original" not in values:
        return ""
    return f"{values['ours'][0] / values['original'][0]:.2f}x"


# -- row 6: draining at a normal exit ------------------------------------------------------------

def exit_child(url: str, n: int, name: str) -> None:
    """Child process: log ``n`` events, print the time, and exit without flush or close."""
    handler = InteraktHandler(api_key=API_KEY, host=url)
    log = quiet_logger("bench.exit", handler)
    for i in range(n):
        log.info(name, extra={"interakt_event": {
            "user_id": str(i), "traits": {"orderNumber": TRAITS_ORDER}}})
    print(time.monotonic(), flush=True)


def exit_drain(sizes: Sizes, server: ServerProcess, results: Results) -> None:
    seconds: List[float] = []
    all_arrived = True
    for round_no in range(sizes.drain_rounds):
        name = f"exit-drain-{round_no}"
        child = subprocess.Popen(
            [sys.executable, __file__, "--exit-child", server.url, str(sizes.drain), name],
            stdout=subprocess.PIPE, text=True,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        child.wait(120)
        ended = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the child's
        if child.returncode != 0 or not line.strip():
            results.notes.append(f"exit drain round {round_no}: child failed ({child.returncode})")
            continue
        seconds.append(ended - float(line))
        arrived = server.count(name)
        if arrived != sizes.drain:
            all_arrived = False
            results.notes.append(f"exit drain round {round_no}: {arrived}/{sizes.drain} arrived")
    if not seconds:
        results.rows.append(("6", "drain at exit", "failed", "", "", "<= 3 s", "**no**"))
        return
    median = statistics.median(seconds)
    spread = f" ({min(seconds):.2f}-{max(seconds):.2f})" if len(seconds) > 1 else ""
    results.rows.append((
        "6", f"s from the last log call to process exit, {sizes.drain:,} queued, "
        f"{LATENCY * 1000:.0f} ms latency", f"{median:.2f} s{spread}",
        "original: never exits without track.shutdown()", "", "<= 3 s",
        "yes" if median <= 3 and all_arrived else "**no**" + ("" if all_arrived else " (lost)"),
    ))


# -- shared rate limit: processes that share one account limit ----------------------------------

@dataclass
class RateCase:
    """``processes`` x ``events`` against an account admitting ``limit`` requests/s in all."""

    label: str
    processes: int
    events: int
    limit: Optional[float]
    latency: float = LATENCY
    settings: Dict[str, Any] = field(default_factory=dict)  # InteraktHandler keyword arguments


@dataclass
class RateOutcome:
    delivered: int
    lost: int
    throttled: int
    seconds: float

    def share_429(self) -> float:
        return self.throttled / max(1, self.delivered + self.throttled)


def rate_child(url: str, n: int, name: str, settings: str) -> None:
    """Child process: log ``n`` events at once and deliver them (ours: close; the original
    SDK, ``{"sdk": "original"}``: flush and join), then print the monotonic times of the first
    call and of the end."""
    options = json.loads(settings)
    if options.pop("sdk", "ours") == "original":
        track = original_sdk()
        assert track is not None, "the original SDK is not installed"
        client = start_original(track, url, max_queue_size=max(10_000, n),
                                on_error=lambda error, message: None)
        started = time.monotonic()
        for i in range(n):
            track.event(user_id=str(i), event=name, traits={})
        stop_original(track, client, drain=True)
    else:
        handler = InteraktHandler(api_key=API_KEY, host=url, shutdown_timeout=900,
                                  max_queue_size=max(10_000, n), **options)
        log = quiet_logger("bench.rate", handler)
        started = time.monotonic()
        for i in range(n):
            log.info(name, extra={"interakt_event": {"user_id": str(i)}})
        handler.close()
    print(started, time.monotonic(), flush=True)


def run_rate_case(case: RateCase, name: str) -> RateOutcome:
    server = ServerProcess(latency=case.latency, rate_limit=case.limit)
    try:
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--rate-child", server.url, str(case.events), name,
                 json.dumps(case.settings)], stdout=subprocess.PIPE, text=True,
            )
            for _ in range(case.processes)
        ]
        times = []
        for child in children:
            out, _ = child.communicate(timeout=1800)
            if child.returncode == 0 and out.strip():
                times.append([float(v) for v in out.split()])
        accepted, throttled = server.tally(name)
    finally:
        server.close()
    total = case.processes * case.events
    seconds = max(t[1] for t in times) - min(t[0] for t in times) if times else float("nan")
    return RateOutcome(accepted, total - accepted, throttled, seconds)


def rate_row(case: RateCase, outcome: RateOutcome) -> str:
    total = case.processes * case.events
    limit = "none" if case.limit is None else f"{case.limit:g}/s"
    ideal = "" if case.limit is None else f"{outcome.seconds / (total / case.limit):.2f}x"
    return (f"| {case.label} | {case.processes} x {case.events} | {limit} | "
            f"{case.latency * 1000:.0f} ms | {outcome.delivered:,}/{total:,} | {outcome.lost} | "
            f"{outcome.share_429():.1%} | {outcome.seconds:.1f} s | "
            f"{total / outcome.seconds:.1f}/s | {ideal} |")


def rate_cases(sizes: Sizes, redis_url: Optional[str]) -> List[RateCase]:
    """The issue's situations, and the three ways through the 8-process one."""
    redis = {"rate_limit": 19, "rate_limit_store": redis_url}
    if sizes.rate_cases == "quick":
        return [RateCase("ours: adaptive pacing", 2, 10, 50)] + (
            [RateCase("ours: Redis", 2, 10, 50, settings=redis)] if redis_url else [])
    cases = [
        RateCase("ours", 1, 600, 20),
        RateCase("ours", 6, 150, 20),
        RateCase("no limiter: the original SDK", 8, 250, 20, settings={"sdk": "original"}),
        RateCase("ours: adaptive pacing", 8, 250, 20),
    ]
    if redis_url is not None:
        cases.append(RateCase("ours: rate_limit=19 shared in Redis", 8, 250, 20, settings=redis))
    return [*cases, RateCase("ours", 1, 2000, 100, latency=0.2),
            RateCase("ours", 1, 3000, 80, latency=0.15)]


def shared_rate_limit(sizes: Sizes, results: Results) -> None:
    with contextlib.ExitStack() as stack:
        try:
            import redis  # noqa: F401  (the extra the Redis row needs)

            store: Optional[str] = stack.enter_context(redis_server())
            why_not = ""
        except (ImportError, FileNotFoundError) as exc:
            store, why_not = None, str(exc)
        cases = rate_cases(sizes, store)
        if original_sdk() is None:
            cases = [c for c in cases if c.settings.get("sdk") != "original"]
        rows = [rate_row(case, run_rate_case(case, f"rate-{i}")) for i, case in enumerate(cases)]
    notes = [] if store else [f"(the Redis row is skipped: {why_not})"]
    results.sections.append("\n".join([
        "Shared rate limit: N processes x M events against one account limit "
        "(MockInteraktServer(rate_limit=R) in a child process: a sliding 1 s window, no "
        "Retry-After). Time runs from the first log call to the last process done; ideal is "
        "events / limit:",
        "",
        "| settings | processes x events | limit | round trip | delivered | lost | 429s | time "
        "| events/s | time / ideal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows, *notes,
    ]))


def round_trip_sweep(sizes: Sizes, results: Results) -> None:
    """Events/s at 20, 150 and 300 ms with no rate limit, default settings, against the
    original SDK (which sends one request at a time)."""
    track = original_sdk()
    rows = []
    for latency in sizes.sweep_latencies:
        server = ServerProcess(latency=latency)
        try:
            ours, _, problem = deliver_ours(server, sizes.sweep, f"sweep-ours-{latency}")
            if problem:
                results.notes.append(f"round-trip sweep at {latency * 1000:.0f} ms: {problem}")
            original = float("nan")
            if track is not None:
                n = max(3, round(sizes.sweep_seconds / latency))
                original, _, problem = deliver_original(track, server, n, f"sweep-orig-{latency}")
                if problem:
                    results.notes.append(f"round-trip sweep at {latency * 1000:.0f} ms: {problem}")
        finally:
            server.close()
        rows.append(f"| {latency * 1000:.0f} ms | {ours:.0f}/s | {original:.1f}/s | "
                    f"{ours / original:.1f}x |")
    results.sections.append("\n".join([
        f"Round-trip sweep: events/s delivered with no rate limit, default settings "
        f"({sizes.sweep} events for ours; the original SDK about {sizes.sweep_seconds:g} s "
        f"of its one-at-a-time sending):",
        "",
        "| round trip | ours | original SDK | ratio |",
        "| --- | --- | --- | --- |",
        *rows,
    ]))


# -- report --------------------------------------------------------------------------------------

def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()} ({platform.python_implementation()})")


def report(results: Results, sizes: Sizes, command: str, warnings: List[str]) -> str:
    lines = [
        f"Machine: {machine()}  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `{command}`  ",
        f"Sizes: {sizes.rounds} rounds x {sizes.calls:,} calls per caller variant; "
        f"{sizes.deliver_rounds} x {sizes.deliver} events delivered per side; "
        f"{sizes.queued:,} queued; {sizes.drain_rounds} x {sizes.drain:,} drained at exit",
        "",
        "| # | measure | ours (median) | against (median) | ratio (range) | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in results.rows]
    if results.per_call:
        lines += ["", "Caller cost per variant, µs per call (median of rounds; min-max):", ""]
        for name, values in results.per_call.items():
            lines.append(f"- {name}: {statistics.median(values):.3f} "
                         f"({min(values):.3f}-{max(values):.3f})")
    for section in results.sections:
        lines += ["", section]
    lines += ["", "Notes:", ""] + [f"- {note}" for note in results.notes]
    if warnings:
        lines.append(f"- library warnings during the run: {len(warnings)} (expected: handlers "
                     f"closed with payloads still queued), first: {warnings[0]}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke run, not numbers")
    parser.add_argument("-n", "--calls", type=int, help="calls per caller variant per round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the caller rows")
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--exit-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--rate-limit", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rate-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--only-rate", action="store_true",
                        help="only the shared rate limit and round-trip sections")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.hang, args.rate_limit)
        return 0
    if args.rate_child:
        url, n, name, settings = args.rate_child
        rate_child(url, int(n), name, settings)
        return 0
    if args.exit_child:
        url, n, name = args.exit_child
        exit_child(url, int(n), name)
        return 0

    sizes = QUICK if args.quick else Sizes()
    if args.calls:
        sizes.calls = args.calls
    if args.rounds:
        sizes.rounds = args.rounds
    collect = Collect()
    for name in ("interakt_logging", "interakt"):
        quiet_logger(name, collect).setLevel(logging.WARNING)
    results = Results()
    server = ServerProcess(latency=LATENCY)
    hanging = ServerProcess(hang=True)  # takes requests and never answers: all stays queued
    try:
        steps = [
            ("caller cost", lambda: caller_cost(sizes, hanging, results)),
            ("memory", lambda: memory(sizes, hanging, results)),
            ("delivery", lambda: delivery(sizes, server, results)),
            ("exit drain", lambda: exit_drain(sizes, server, results)),
            ("round-trip sweep", lambda: round_trip_sweep(sizes, results)),
            ("shared rate limit", lambda: shared_rate_limit(sizes, results)),
        ]
        if args.only_rate:
            steps = steps[-2:]
        for title, step in steps:
            started = time.monotonic()
            step()
            print(f"[{title}: {time.monotonic() - started:.1f} s]", file=sys.stderr, flush=True)
            if title == "memory":
                hanging.close()  # the hung requests fail now, so parked senders can end
                for cleanup in results.after_hang:
                    cleanup()
    finally:
        hanging.close()
        server.close()
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report(results, sizes, command.strip(), collect.messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
