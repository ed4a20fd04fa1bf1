"""CPU use of chosen processes and of the whole machine, sampled from /proc in a background thread.

A point's CPU figures are the cores each process used inside the timed window (interpolated between samples,
``SAMPLE_S`` apart): a process near 1.0 was CPU-bound there, and the machine's busy cores near its core count
mean everything was (the 2 cores here are shared with other work).
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from pathlib import Path

SAMPLE_S = 0.05
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at index 2 (state); utime, stime are 14, 15.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent outside idle and iowait since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


def interface_bytes(pid: int, intf: str) -> int | None:
    """Bytes received plus sent by ``intf`` in ``pid``'s network namespace, or None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == intf:
            fields = counters.split()
            return int(fields[0]) + int(fields[8])
    return None


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


class CpuSampler:
    """Samples the CPU seconds of registered PIDs and of the machine until ``stop``."""

    def __init__(self) -> None:
        self._groups: dict[str, list[int]] = {}
        #: pid -> (sample times, CPU seconds), from the pid's registration on.
        self._series: dict[int, tuple[list[float], list[float]]] = {}
        self._machine: tuple[list[float], list[float]] = ([], [])
        #: (namespace pid, interface) whose traffic ``last_traffic`` follows, and its samples.
        self._links: list[tuple[int, str]] = []
        self._traffic: tuple[list[float], list[int]] = ([], [])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sample()

    def watch(self, group: str, pid: int) -> None:
        """Count ``pid`` in ``group`` (e.g. "switch", "hosts") from now on."""
        with self._lock:
            self._groups.setdefault(group, []).append(pid)
            self._series.setdefault(pid, ([], []))
        self._sample()

    def watch_traffic(self, pid: int, intf: str) -> None:
        """Follow the bytes through ``intf`` in ``pid``'s namespace (see ``last_traffic``)."""
        with self._lock:
            self._links.append((pid, intf))

    def last_traffic(self) -> float:
        """The first sample time after the watched interfaces' byte counts last changed: when traffic ended."""
        with self._lock:
            times, values = self._traffic
            for i in range(len(values) - 1, 0, -1):
                if values[i] != values[i - 1]:
                    return times[i]
            return times[-1] if times else time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            pids = list(self._series)
            links = list(self._links)
        now = time.monotonic()
        readings = {pid: process_cpu_seconds(pid) for pid in pids}
        machine = machine_busy_seconds()
        traffic = sum(interface_bytes(pid, intf) or 0 for pid, intf in links)
        with self._lock:
            self._traffic[0].append(now)
            self._traffic[1].append(traffic)
            for pid, value in readings.items():
                times, values = self._series[pid]
                if value is None:
                    # A process that ended keeps its last reading (it used nothing since).
                    value = values[-1] if values else 0.0
                times.append(now)
                values.append(value)
            self._machine[0].append(now)
            self._machine[1].append(machine)

    @staticmethod
    def _at(t: float, series: tuple[list[float], list[float]]) -> float:
        times, values = series
        if not times:
            return 0.0
        i = bisect_left(times, t)
        if i <= 0:
            return values[0]
        if i >= len(times):
            return values[-1]
        t0, t1 = times[i - 1], times[i]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return values[i - 1] + w * (values[i] - values[i - 1])

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores used between two ``time.monotonic`` instants: per group (summed over its PIDs, and the busiest
        PID as ``<group>_max``) and by the whole machine (``machine``)."""
        with self._lock:
            span = max(end - start, 1e-9)
            result: dict[str, float] = {}
            for group, pids in self._groups.items():
                used = [self._at(end, self._series[p]) - self._at(start, self._series[p]) for p in pids]
                result[group] = sum(used) / span
                result[f"{group}_max"] = max(used, default=0.0) / span
            result["machine"] = (self._at(end, self._machine) - self._at(start, self._machine)) / span
            return result
