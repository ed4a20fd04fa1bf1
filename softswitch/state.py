"""Control-plane-visible state of the software switch, by P4Info name.

The P4Runtime server (``p4runtime_server.py``) writes it; the data path (``pipeline.py``) reads it. Keys and
action parameters are plain non-negative ints here: byte strings and numeric P4Info ids exist only at the
P4Runtime boundary.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

#: Exact-match key: one int per match field, in P4Info order.
Key = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """An action by P4Info name with its parameter values by name."""

    name: str
    params: dict[str, int] = field(default_factory=dict)


@dataclass
class Table:
    """An exact-match table."""

    name: str
    key_names: tuple[str, ...]
    default: Action
    #: The default action the pipeline was loaded with (restored when the entry is reset).
    initial_default: Action
    size: int
    entries: dict[Key, Action] = field(default_factory=dict)

    def lookup(self, key: Key) -> Action | None:
        """The entry's action, or None on a miss (the caller applies ``default``)."""
        return self.entries.get(key)


@dataclass
class CounterArray:
    """An indirect packets-and-bytes counter array."""

    name: str
    size: int
    packets: np.ndarray = field(init=False)
    bytes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.packets = np.zeros(self.size, dtype=np.uint64)
        self.bytes = np.zeros(self.size, dtype=np.uint64)

    def count(self, index: int, nbytes: int) -> None:
        self.packets[index] += 1
        self.bytes[index] += nbytes


@dataclass
class SwitchState:
    """Tables, multicast groups and counters of one loaded pipeline.

    Writers hold ``lock``; the data path reads without it (dict reads of whole entries are atomic in CPython,
    and a writer replaces an entry with one assignment).
    """

    tables: dict[str, Table] = field(default_factory=dict)
    #: group id -> list of (egress port, replica id)
    mcast_groups: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    counters: dict[str, CounterArray] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: Incremented on every control-plane write, so the data path can invalidate anything it caches.
    generation: int = 0

    def bump(self) -> None:
        self.generation += 1
