"""Retransmission timing and congestion control: one min-heap of per-slot deadlines and an RTT estimator.

No timer object per packet: a burst of first transmissions pushes one ``(deadline, seq, slots, generations)``
entry for all its slots (they share the send time and the timeout); a RESULT just bumps the slot's generation,
which turns its item stale (stale items are dropped when their entry reaches the top). The receive loop pops
expired entries once per iteration. The lossless path costs one ``heappush`` per burst and nothing per RESULT.
The congestion window that limits how many rounds are in flight lives here too.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np


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
    """Jacobson/Karels smoothed RTT; samples only from rounds sent once (Karn's rule).

    ``slack``: queueing delay the congestion window tolerates before it reacts (``WindowConfig.delay_target``);
    the timeout stays at least that far above the smoothed RTT, so a queue the window allows never fires it.
    """

    def __init__(self, config: RtoConfig, slack: float = 0.0) -> None:
        self.config = config
        self.slack = slack
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
        rto = max(self.srtt + 4 * self.rttvar, self.srtt + self.slack, self.config.minimum)
        self.rto = min(rto, self.config.maximum)


class DeadlineHeap:
    """Per-slot retransmission deadlines with lazy invalidation; slots sent together share one entry.

    An entry is ``(deadline, seq, slots, generations)`` with two int64 arrays: a burst's slots and the generation
    each had when it was sent. A slot's item is stale once its generation moved on.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, np.ndarray, np.ndarray]] = []
        self._seq = itertools.count()  # tie-breaker: entries never compare their arrays

    def push(self, deadline: float, slots: np.ndarray, generations: np.ndarray) -> None:
        """One deadline for every slot in ``slots`` (with its current generation); takes ownership of both."""
        if len(slots):
            heapq.heappush(self._heap, (deadline, next(self._seq), slots, generations))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_expired(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(slots, generations) of every item due by ``now``; the caller drops stale generations."""
        heap = self._heap
        slots, gens = [], []
        while heap and heap[0][0] <= now:
            _, _, s, g = heapq.heappop(heap)
            slots.append(s)
            gens.append(g)
        if not slots:
            return _EMPTY, _EMPTY
        if len(slots) == 1:
            return slots[0], gens[0]
        return np.concatenate(slots), np.concatenate(gens)

    def discard_stale(self, current: np.ndarray) -> None:
        """Drop stale items from the top entry, so ``next_deadline`` does not wake the loop for nothing."""
        heap = self._heap
        while heap:
            deadline, seq, slots, gens = heap[0]
            live = current[slots] == gens
            if live.all():
                return
            if live.any():
                heapq.heapreplace(heap, (deadline, seq, slots[live], gens[live]))
                return
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._heap)


_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Bounds and steps of the congestion window (rounds in flight), see :class:`CongestionWindow`."""

    initial: float = 4.0
    minimum: float = 4.0
    decrease: float = 0.5  # multiplicative decrease on a congestion event
    #: Queueing delay (smoothed RTT above the smallest RTT of the last 1-2 s) that counts as congestion.
    delay_target: float = 0.020

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.initial or not 0 < self.decrease < 1 or self.delay_target <= 0:
            raise ValueError(f"need 1 <= minimum <= initial, 0 < decrease < 1, delay_target > 0; got {self}")


#: A loss decreases the window only while the smoothed RTT is this share of ``delay_target`` above the smallest.
LOSS_QUEUE_SHARE = 0.5

#: Seconds over which the smallest RTT is taken (it is the smallest of the current and the previous period).
MIN_RTT_PERIOD = 1.0


class CongestionWindow:
    """AIMD on loss and delay, in rounds in flight, as TCP Reno / ATP: see docs/host_agent.md, "Congestion control".

    Slow start (+1 per clean RESULT) up to ``ssthresh``, then +1/cwnd per clean RESULT (one round per RTT). A
    congestion event multiplies the window by ``decrease`` and sets ``ssthresh`` to the result, at most once per
    window (only an event about a round sent after the previous decrease counts): a round lost while others came
    back, or a smoothed RTT more than ``delay_target`` above the smallest RTT of the last one to two seconds (a
    queue building up). The smallest RTT is forgotten after that time, so a job that started while others filled
    the queue does not take that queue for the path's own delay (and more than its share).
    """

    def __init__(self, maximum: int, config: WindowConfig | None = None) -> None:
        self.config = config or WindowConfig()
        self.maximum = float(maximum)
        self.cwnd = min(self.config.initial, self.maximum)
        self.ssthresh = self.maximum
        self.min_rtt = float("inf")
        self.srtt: float | None = None
        self.decreases = 0
        self._min_before = self._min_now = float("inf")
        self._period_end = 0.0
        self._recovery_from = -1.0  # rounds sent before this time belong to the last decrease's window

    @property
    def limit(self) -> int:
        return int(self.cwnd)

    def on_results(self, clean: int) -> None:
        """``clean`` rounds completed that were sent once."""
        cwnd = self.cwnd
        if cwnd < self.ssthresh:  # slow start: one more round in flight per RESULT
            step = min(float(clean), self.ssthresh - cwnd)
            cwnd += step
            clean -= step
        if clean > 0:  # congestion avoidance: one more round in flight per window of RESULTs
            cwnd += clean / cwnd
        self.cwnd = min(cwnd, self.maximum)

    def on_rtt(self, rtt: float, sent_at: float, now: float) -> None:
        """An RTT sample of a round sent once at ``sent_at``: a queue building up is congestion."""
        if now >= self._period_end:
            self._min_before, self._min_now = self._min_now, float("inf")
            self._period_end = now + MIN_RTT_PERIOD
        self._min_now = min(self._min_now, rtt)
        self.min_rtt = min(self._min_before, self._min_now)
        # Smoothed (gain 1/8, as TCP's SRTT): a queue raises every sample, one stalled process only one.
        self.srtt = rtt if self.srtt is None else self.srtt + (rtt - self.srtt) / 8
        if self.srtt > self.min_rtt + self.config.delay_target:
            self.on_loss(sent_at, now)

    def on_loss(self, sent_at: float, now: float) -> None:
        """A round first sent at ``sent_at`` was lost (or delayed by a queue): decrease once per window."""
        if sent_at < self._recovery_from:
            return
        if self.srtt is not None and self.srtt < self.min_rtt + LOSS_QUEUE_SHARE * self.config.delay_target:
            return  # no queue: the loss is not congestion
        self.cwnd = self.ssthresh = max(self.cwnd * self.config.decrease, self.config.minimum)
        self._recovery_from = now
        self.decreases += 1
