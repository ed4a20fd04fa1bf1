"""The live progress line: how far the switch is through the job, and what each host is doing.

Progress comes from the switch itself: the job's ``completed`` counter (one per chunk whose sum was multicast)
against the number of chunks the run needs. On a terminal the line is redrawn in place; otherwise (a pipe, a
log) one line is printed per update, each starting with ``progress:``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class HostState:
    """What one host's agent is doing, as the demo sees it."""

    name: str
    state: str = "starting"  # starting, running, done, failed
    report: dict[str, Any] | None = None
    error: str = ""


@dataclass
class JobCounters:
    """The job's counters from the latest statistics poll that still had the job."""

    completed: int = 0
    aggregated: int = 0
    retransmit_answered: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, job: dict[str, Any]) -> JobCounters:
        return cls(
            completed=job["completed"]["packets"],
            aggregated=job["aggregated"]["packets"],
            retransmit_answered=job["retransmit_answered"]["packets"],
            drops={name: value["packets"] for name, value in job["drops"].items() if value["packets"]},
        )


class ProgressLine:
    """Prints ``progress:`` lines (or redraws one line on a terminal)."""

    def __init__(self, expected_chunks: int, stream: TextIO | None = None) -> None:
        self.expected_chunks = max(expected_chunks, 1)
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self._width = 0

    def render(self, elapsed: float, hosts: list[HostState], job: JobCounters | None) -> str:
        if all(h.state in ("done", "failed") for h in hosts):
            # The last poll may predate the end of the job: no percentage that looks like a stall.
            done = "finished" + (f" ({job.completed} chunks summed by the last poll)" if job else "")
        elif job is None:
            done = "waiting for every host to join"
        else:
            # The agents' own protocol rounds make the count run slightly past the data's chunks: clamp.
            percent = min(100.0, 100.0 * job.completed / self.expected_chunks)
            done = f"{percent:5.1f}% ({job.completed} chunks summed"
            if job.retransmit_answered:
                done += f", {job.retransmit_answered} retransmissions answered"
            done += ")"
        states = " ".join(f"{h.name}:{h.state}" for h in hosts)
        return f"progress: [{elapsed:6.1f} s] {done} | {states}"

    def show(self, elapsed: float, hosts: list[HostState], job: JobCounters | None) -> None:
        text = self.render(elapsed, hosts, job)
        if self.live:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the redrawn line so the next output starts on its own line."""
        if self.live and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
