"""The epoch counter alone: epochs only grow, restart only on a push, and run out with an error, never a reuse."""

from __future__ import annotations

import pytest

from netagg.constants import EPOCH_BITS
from netagg.controller.epochs import MAX_EPOCH, EpochCounter, EpochSpaceExhausted

pytestmark = pytest.mark.unit


def test_epochs_start_at_1_and_only_grow() -> None:
    epochs = EpochCounter()
    taken = [epochs.take() for _ in range(5)]
    assert taken == [1, 2, 3, 4, 5]
    for epoch in taken:
        epochs.give_back(epoch)
    # Given back or not, an epoch is not handed out again before a push.
    assert epochs.take() == 6 and epochs.last == 6


def test_a_push_restarts_above_the_epochs_still_held_or_installed() -> None:
    epochs = EpochCounter()
    a, b, c = epochs.take(), epochs.take(), epochs.take()
    epochs.give_back(b)
    epochs.give_back(c)
    epochs.pipeline_pushed()
    assert epochs.take() == a + 1  # a's job is still installed: its epoch comes back into its copies
    epochs.give_back(a)
    epochs.give_back(a + 1)
    epochs.pipeline_pushed(installed=[9])  # a job the switch layer re-installs, whatever this counter knows
    assert epochs.take() == 10
    epochs.give_back(10)
    epochs.pipeline_pushed()
    assert epochs.take() == 1  # nothing left on the switch: epoch 0 is what every register holds


def test_the_last_epoch_is_the_largest_then_an_error_until_a_push() -> None:
    assert MAX_EPOCH == 2**EPOCH_BITS - 1 == 0xFFFFFFFF
    epochs = EpochCounter(last=MAX_EPOCH - 2)
    assert [epochs.take(), epochs.take()] == [MAX_EPOCH - 1, MAX_EPOCH]
    assert epochs.remaining == 0
    for _ in range(2):  # it stays refused: no wrap to 0 or 1
        with pytest.raises(EpochSpaceExhausted):
            epochs.take()
    epochs.give_back(MAX_EPOCH - 1)
    epochs.give_back(MAX_EPOCH)
    epochs.pipeline_pushed()
    assert epochs.take() == 1


def test_out_of_range_start_is_refused() -> None:
    for last in (-1, MAX_EPOCH + 1):
        with pytest.raises(ValueError):
            EpochCounter(last=last)
