"""Retransmission timing: one min-heap of per-slot deadlines and an RTT estimator.

No timer object per packet: a burst of first transmissions pushes one ``(deadline, seq, [(slot, generation),
...])`` entry for all its slots (they share the send time and the timeout); a RESULT just bumps the slot's
generation, which turns its item stale (stale items are dropped when their entry reaches the top). The receive
loop pops expired entries once per iteration. The lossless path costs one ``heappush`` per burst and nothing
per RESULT.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RtoConfig:
    """Retransmission timeout bounds, in seconds."""

    # A floor well above loopback RTTs: a Python data path on a busy machine stalls for milliseconds now and
    # then, and retransmitting into that stall only adds load (measured: docs/host_agent.md, "Tuning").
    initial: float = 0.05
    minimum: float = 0.02
    maximum: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"need 0 < minimum <= initial <= maximum, got {self}")


class RttEstimator:
    """Jacobson/Karels smoothed RTT; samples only from rounds sent once (Karn's rule)."""

    def __init__(self, config: RtoConfig) -> None:
        self.config = config
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = config.initial

    def backoff(self) -> None:
        """A retransmission timer fired: double the timeout until a clean sample says otherwise (as TCP does).

        Without this, Karn's rule starves the estimator exactly when the timeout is too short (every round is
        retransmitted, so none yields a sample) and spurious retransmissions feed on themselves.
        """
        self.rto = min(self.rto * 2, self.config.maximum)

    def sample(self, rtt: float) -> None:
        rtt = min(rtt, self.config.maximum)  # a peer that submitted late must not inflate the timer for long
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar += 0.25 * (abs(self.srtt - rtt) - self.rttvar)
            self.srtt += 0.125 * (rtt - self.srtt)
        self.rto = min(max(self.srtt + 4 * self.rttvar, self.config.minimum), self.config.maximum)


class DeadlineHeap:
    """Per-slot retransmission deadlines with lazy invalidation; slots sent together share one entry."""

    def __init__(self) -> None:
        # (deadline, tie-breaker, [(slot, generation), ...]); the counter keeps tuples from comparing lists.
        self._heap: list[tuple[float, int, list[tuple[int, int]]]] = []
        self._seq = itertools.count()

    def push(self, deadline: float, slot: int, generation: int) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), [(slot, generation)]))

    def push_many(self, deadline: float, items: list[tuple[int, int]]) -> None:
        """One deadline for several ``(slot, generation)`` items; takes ownership of ``items``."""
        if items:
            heapq.heappush(self._heap, (deadline, next(self._seq), items))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_expired(self, now: float) -> list[tuple[int, int]]:
        """(slot, generation) of every item due by ``now``; the caller drops stale generations."""
        due: list[tuple[int, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.extend(heapq.heappop(heap)[2])
        return due

    def discard_stale(self, current: list[int]) -> None:
        """Drop stale items from the top entry, so ``next_deadline`` does not wake the loop for nothing."""
        heap = self._heap
        while heap:
            items = heap[0][2]
            # Results mostly arrive in send order: trim from the front and stop at the first live item, which
            # keeps this amortized O(1) per item.
            i, n = 0, len(items)
            while i < n and current[items[i][0]] != items[i][1]:
                i += 1
            if i < n:
                if i:
                    del items[:i]
                return
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._heap)
