"""Slot ranges (epochs: test_epochs.py, test_jobs.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netagg.controller.pool import PoolFull, SlotPool, SlotRange

pytestmark = pytest.mark.unit


def test_first_fit_and_reuse_of_gaps() -> None:
    pool = SlotPool(10)
    a, b, c = pool.allocate(3), pool.allocate(4), pool.allocate(3)
    assert (a, b, c) == (SlotRange(0, 3), SlotRange(3, 4), SlotRange(7, 3))
    assert pool.free_slots == 0
    pool.release(b)
    assert pool.allocate(2) == SlotRange(3, 2)
    assert pool.allocate(2) == SlotRange(5, 2)


def test_full_reports_free_and_largest() -> None:
    pool = SlotPool(10)
    first = pool.allocate(4)
    pool.allocate(2)
    pool.release(first)  # free: 0..3 and 6..9 -> 8 free, largest 4
    with pytest.raises(PoolFull) as info:
        pool.allocate(5)
    assert (info.value.wanted, info.value.free, info.value.largest_free) == (5, 8, 4)


def test_release_of_unknown_range_is_an_error() -> None:
    pool = SlotPool(4)
    with pytest.raises(ValueError):
        pool.release(SlotRange(0, 2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=60))
def test_random_allocations_stay_disjoint(ops: list[tuple[bool, int]]) -> None:
    pool = SlotPool(32)
    held: list[SlotRange] = []
    for allocate, n in ops:
        if allocate or not held:
            try:
                r = pool.allocate(n)
            except PoolFull as full:
                assert full.largest_free < n and full.free == pool.free_slots
                continue
            held.append(r)
        else:
            pool.release(held.pop(n % len(held)))
        covered = sorted(s for r in held for s in range(r.base, r.end))
        assert len(covered) == len(set(covered)) and all(0 <= s < 32 for s in covered)
        assert pool.free_slots == 32 - len(covered)
