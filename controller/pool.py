"""The switch's aggregation slot pool: contiguous disjoint ranges per job (epochs are in ``epochs.py``)."""

from __future__ import annotations

from dataclasses import dataclass


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
    """Allocates slot ranges of a pool of ``size`` slots. Not thread-safe: the job manager serialises access.

    A freed range still holds its last job's state on the switch; the new job's epoch makes the switch treat it as
    empty (``epochs.py``).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"pool size {size} must be >= 1")
        self.size = size
        self._allocated: dict[int, SlotRange] = {}  # base -> range

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
        """Free a range."""
        if self._allocated.get(allocated.base) != allocated:
            raise ValueError(f"range {allocated} is not allocated")
        del self._allocated[allocated.base]
