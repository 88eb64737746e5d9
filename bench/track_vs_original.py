"""µs per ``track.event()`` call: interakt-track-python 1.0.7 against ``interakt_logging.track``.

    pip install interakt-track-python==1.0.7   # the original, for comparison only
    python bench/track_vs_original.py

Each SDK runs in fresh subprocesses (alternating, several times) against a loopback
MockInteraktServer, once answering ("live") and once never answering ("hang": nothing is sent,
the queue only grows). What is measured is the calling thread's CPU time per call (validation,
serialization, queueing), so the sender threads' work is not counted. Reported: the median over
processes of each process's best round.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

CALLS = 20_000
ROUNDS = 5
PROCESSES = 4

CHILD = r"""
import os, sys, time
from interakt_logging.testing import MockInteraktServer

calls, rounds = int(sys.argv[2]), int(sys.argv[3])
with MockInteraktServer() as server:
    server.hang = sys.argv[4] == "hang"
    if sys.argv[1] == "original":
        import track
    else:
        from interakt_logging import track
    track.api_key = "bench-key"
    track.host = server.url
    track.max_queue_size = calls * rounds + 10
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(calls):
            track.event(user_id="u1", event="Order Placed", country_code="+91",
                        phone_number="9999999999", traits={"orderNumber": "CUS001", "total": 12.5})
        best = min(best, (time.thread_time() - started) / calls * 1e6)
    print(best, flush=True)
    os._exit(0)  # the original's non-daemon sender thread would keep the process alive
"""


def main() -> None:
    for server in ("live", "hang"):
        results: dict[str, list[float]] = {"original": [], "interakt_logging": []}
        for _ in range(PROCESSES):
            for which, values in results.items():
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, which, str(CALLS), str(ROUNDS), server],
                    capture_output=True, text=True, check=True,
                ).stdout
                values.append(float(out))
        for which, values in results.items():
            runs = ", ".join(f"{v:.2f}" for v in values)
            print(f"{server}: {which:17s} {statistics.median(values):5.2f} µs/call  "
                  f"(processes: {runs})")


if __name__ == "__main__":
    main()
