"""BML's gradient synchronization schedule on a BCube(n, k) network (Wang et al., NeurIPS 2018).

BCube(n, k) has ``n**k`` hosts, each with ``k`` network cards, one per level. A host is named by its ``k`` base-n
digits; the level-``l`` switches join the ``n`` hosts that differ only in digit ``l`` (a *level-l group*). BML
splits the gradient into ``k`` parts, one per card, and synchronizes in ``k`` aggregation stages and ``k``
broadcast stages:

* aggregation stage ``s``: part ``p`` travels on level ``(p + s) mod k``. Each level-l group does a reduce-scatter
  of the range of part ``p`` its hosts currently hold: the range is cut into ``n`` pieces, and the host whose digit
  ``l`` is ``j`` receives piece ``j`` from the other ``n - 1`` and sums them. After stage ``s`` a host holds
  ``1/n**(s+1)`` of the part, summed over the ``n**(s+1)`` hosts that differ from it in the levels used so far;
  after ``k`` stages, ``1/n**k`` of each part summed over every host.
* broadcast stage ``s`` runs the aggregation stages backwards as all-gathers: each host sends the piece it holds to
  the other ``n - 1`` hosts of the group, so after ``k`` of them every host holds the whole sum.

In every stage each part uses a different level, so every card of every host sends and receives exactly once per
stage, and each host sends ``2 (n**k - 1) / n**k`` of its gradient in all, spread over ``k`` cards: about ``1/k``
of a ring's time per byte when the cards are the bottleneck.

This module is the schedule and an exact in-memory execution of it (integer sums, the reference for transports):
``schedule`` lists every transfer; ``execute`` runs them over one array per host.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Phase(Enum):
    AGGREGATE = "aggregate"  # reduce-scatter: the receiver adds the piece to its own
    BROADCAST = "broadcast"  # all-gather: the receiver stores the piece


@dataclass(frozen=True)
class BCube:
    """The BCube(n, k) topology: ``n`` hosts per switch, ``k`` levels (cards per host)."""

    n: int
    k: int

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"BCube(n={self.n}, k={self.k}): a switch joins at least n=2 hosts")
        if self.k < 1:
            raise ValueError(f"BCube(n={self.n}, k={self.k}): at least one level (k=1: one switch)")

    @property
    def hosts(self) -> int:
        return self.n**self.k

    def digit(self, host: int, level: int) -> int:
        return (host // self.n**level) % self.n

    def with_digit(self, host: int, level: int, value: int) -> int:
        """The host whose digits are ``host``'s except digit ``level``, which is ``value``."""
        return host + (value - self.digit(host, level)) * self.n**level

    def group(self, host: int, level: int) -> list[int]:
        """The ``n`` hosts of ``host``'s level-``level`` group, ordered by their digit ``level``."""
        return [self.with_digit(host, level, j) for j in range(self.n)]

    @classmethod
    def for_hosts(cls, hosts: int, cards: int) -> BCube:
        """The BCube with ``hosts`` hosts of ``cards`` cards each; ValueError when there is none."""
        if cards < 1:
            raise ValueError(f"{cards} network cards per host: BCube needs at least one")
        n = round(hosts ** (1.0 / cards))
        for candidate in (n - 1, n, n + 1):
            if candidate >= 2 and candidate**cards == hosts:
                return cls(candidate, cards)
        raise ValueError(
            f"{hosts} hosts with {cards} cards each is not a BCube: BCube(n, {cards}) has n**{cards} hosts "
            f"({', '.join(str(m**cards) for m in range(2, 6))}, ...)"
        )


@dataclass(frozen=True)
class Transfer:
    """One piece sent in one stage: elements ``[start, stop)`` from ``src`` to ``dst`` on their level-``level`` card."""

    stage: int  # 0..2k-1: aggregation stages first, then broadcast stages
    phase: Phase
    level: int
    part: int
    src: int
    dst: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def part_bounds(count: int, k: int) -> list[tuple[int, int]]:
    """The ``k`` parts of a gradient of ``count`` elements, as contiguous ranges differing by at most one element."""
    edges = [count * p // k for p in range(k + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _pieces(start: int, stop: int, n: int) -> list[tuple[int, int]]:
    edges = [start + (stop - start) * j // n for j in range(n + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def level_of(part: int, stage: int, k: int) -> int:
    """The level part ``part`` uses in aggregation stage ``stage`` (broadcast stage 2k-1-s reuses it)."""
    return (part + stage) % k


def schedule(topo: BCube, count: int) -> list[Transfer]:
    """Every transfer of one synchronization of ``count`` elements, stage by stage."""
    k, n = topo.k, topo.n
    # held[h][p]: the range of part p host h is responsible for before the current aggregation stage.
    held = [[bounds for bounds in part_bounds(count, k)] for _ in range(topo.hosts)]
    history: list[list[list[tuple[int, int]]]] = []  # held before each aggregation stage, for the broadcasts
    transfers: list[Transfer] = []
    for stage in range(k):
        history.append([list(h) for h in held])
        new_held = [list(h) for h in held]
        for part in range(k):
            level = level_of(part, stage, k)
            for host in range(topo.hosts):
                start, stop = held[host][part]
                pieces = _pieces(start, stop, n)
                mine = topo.digit(host, level)
                for j, (a, b) in enumerate(pieces):
                    if j != mine and b > a:
                        dst = topo.with_digit(host, level, j)
                        transfers.append(Transfer(stage, Phase.AGGREGATE, level, part, host, dst, a, b))
                new_held[host][part] = pieces[mine]
        held = new_held
    for back in range(k):
        stage = k - 1 - back  # the aggregation stage being undone
        for part in range(k):
            level = level_of(part, stage, k)
            for host in range(topo.hosts):
                a, b = held[host][part]
                if b > a:
                    for peer in topo.group(host, level):
                        if peer != host:
                            transfers.append(Transfer(k + back, Phase.BROADCAST, level, part, host, peer, a, b))
        held = history[stage]
    return transfers


def execute(topo: BCube, gradients: np.ndarray) -> np.ndarray:
    """Run the schedule over ``gradients`` (hosts x count, an integer dtype); each host's result (hosts x count).

    Integer sums wrap as the dtype's addition does, so the result is bit-exact whatever the order of additions;
    within a stage every transfer reads what the sender held before the stage, as on a real network.
    """
    data = np.asarray(gradients)
    if data.ndim != 2 or data.shape[0] != topo.hosts:
        raise ValueError(f"BCube(n={topo.n}, k={topo.k}) has {topo.hosts} hosts; got gradients of shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"the exact path sums integers (fixed point); got dtype {data.dtype}")
    buffers = data.copy()
    transfers = schedule(topo, data.shape[1])
    for stage in range(2 * topo.k):
        before = buffers.copy()
        with np.errstate(over="ignore"):
            for t in (t for t in transfers if t.stage == stage):
                piece = before[t.src, t.start : t.stop]
                if t.phase is Phase.AGGREGATE:
                    buffers[t.dst, t.start : t.stop] += piece
                else:
                    buffers[t.dst, t.start : t.stop] = piece
    return buffers


def card_load(topo: BCube, transfers: list[Transfer]) -> dict[tuple[int, int, int], tuple[int, int]]:
    """(stage, host, level) -> (elements sent, elements received) on that card in that stage."""
    load: dict[tuple[int, int, int], tuple[int, int]] = {}
    for t in transfers:
        sent = load.get((t.stage, t.src, t.level), (0, 0))
        load[(t.stage, t.src, t.level)] = (sent[0] + t.size, sent[1])
        got = load.get((t.stage, t.dst, t.level), (0, 0))
        load[(t.stage, t.dst, t.level)] = (got[0], got[1] + t.size)
    return load
