"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def per_call(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call of ``fn``, over as many calls as fill ``min_time``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def best_of(fn: Callable[[], object], repeat: int = 7, min_time: float = 0.2) -> float:
    """Best per-call wall time of ``fn`` in seconds over ``repeat`` rounds of at least ``min_time`` each."""
    fn()  # warm caches and allocations
    return min(per_call(fn, min_time) for _ in range(repeat))


def report(name: str, rows: list[tuple[str, str]]) -> None:
    """Print a small aligned table."""
    width = max(len(k) for k, _ in rows)
    print(f"== {name}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none), for the reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
