"""The benchmark runs as documented: ``python bench/run.py --quick`` prints its table.

No timing is asserted here (speed goals live in bench/ and BENCHMARKS.md); this only keeps the
bench working as the code changes. Without the original SDK installed its rows are skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark in a process

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_quick_run_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| # | measure | ours (median) | against (median) | ratio (range) | target | met |" in out
    for row in ("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 6 |"):
        assert row in out, out
    assert "Machine:" in out and "Python" in out
