"""The switch's aggregation slot pool: contiguous disjoint ranges per job, and the epoch record per slot."""

from __future__ import annotations

from dataclasses import dataclass

from netagg.constants import EPOCH_BITS

_EPOCH_COUNT = 1 << EPOCH_BITS


@dataclass(frozen=True, slots=True)
class SlotRange:
    base: int
    slots: int

    @property
    def end(self) -> int:
        return self.base + self.slots


class PoolFull(Exception):
    """No contiguous free range is large enough (the caller turns this into an admission error)."""

    def __init__(self, wanted: int, free: int, largest_free: int) -> None:
        self.wanted, self.free, self.largest_free = wanted, free, largest_free
        super().__init__(f"{wanted} slots wanted, {free} free, largest free range {largest_free}")


class SlotPool:
    """Allocates slot ranges of a pool of ``size`` slots and chooses epochs for them.

    Why track epochs per slot: the switch cannot have its registers cleared through P4Runtime, so a range handed
    to a new job still holds the previous job's state. A job's epoch differs from the epoch last written on every
    slot of its range, so the switch treats all of that state as empty (docs/protocol.md, "Why the epoch").
    Not thread-safe: the job manager serialises access.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"pool size {size} must be >= 1")
        self.size = size
        self._allocated: dict[int, SlotRange] = {}  # base -> range
        self._last_epoch = [0] * size  # 0: never used (registers start at zero)
        self._next_epoch = 1

    @property
    def free_slots(self) -> int:
        return self.size - sum(r.slots for r in self._allocated.values())

    def free_ranges(self) -> list[SlotRange]:
        """The gaps between allocated ranges, in order."""
        gaps, cursor = [], 0
        for r in sorted(self._allocated.values(), key=lambda r: r.base):
            if r.base > cursor:
                gaps.append(SlotRange(cursor, r.base - cursor))
            cursor = r.end
        if cursor < self.size:
            gaps.append(SlotRange(cursor, self.size - cursor))
        return gaps

    def allocate(self, slots: int) -> SlotRange:
        """First-fit allocation of ``slots`` contiguous slots; raises PoolFull."""
        if slots < 1:
            raise ValueError(f"slot count {slots} must be >= 1")
        gaps = self.free_ranges()
        for gap in gaps:
            if gap.slots >= slots:
                allocated = SlotRange(gap.base, slots)
                self._allocated[allocated.base] = allocated
                return allocated
        raise PoolFull(slots, self.free_slots, max((g.slots for g in gaps), default=0))

    def release(self, allocated: SlotRange) -> None:
        """Free a range; its per-slot epoch record stays."""
        if self._allocated.get(allocated.base) != allocated:
            raise ValueError(f"range {allocated} is not allocated")
        del self._allocated[allocated.base]

    def last_epoch(self, slot: int) -> int:
        return self._last_epoch[slot]

    def assign_epoch(self, allocated: SlotRange) -> int:
        """Pick an epoch for a newly allocated range and record it as written on every slot of the range.

        The epoch is never 0 and never the epoch last recorded on any slot of the range. Epochs advance
        round-robin, so a slot sees every other value before one repeats.
        """
        used = set(self._last_epoch[allocated.base : allocated.end])
        for _ in range(_EPOCH_COUNT):
            epoch = self._next_epoch
            self._next_epoch = self._next_epoch % (_EPOCH_COUNT - 1) + 1  # 1..65535, skipping 0
            if epoch not in used:
                break
        else:  # pragma: no cover - a range has at most POOL_SLOTS < 65535 distinct epochs
            raise RuntimeError("no free epoch")
        self._last_epoch[allocated.base : allocated.end] = [epoch] * allocated.slots
        return epoch
