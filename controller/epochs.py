"""Job epochs: 32-bit numbers that only grow between two pushes of the pipeline (docs/protocol.md, "Why the epoch").

The switch cannot have its registers cleared through P4Runtime, so every slot copy keeps the epoch of the last job
that wrote it, however long ago that was; a copy whose stored epoch equals the epoch of the job using it now counts
as that job's live state. A job's epoch therefore must differ from every epoch any copy of its range can hold, and
no record kept per slot can know that (a job writes only the copies it sends on). An epoch that has never been
handed out since the registers were last zeroed is the only safe choice, so the counter only grows. Pushing the
pipeline zeroes the registers, and that is the one moment the counter may start low again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from netagg.constants import EPOCH_BITS

#: The largest epoch; 0 is never handed out (the registers start at zero).
MAX_EPOCH = (1 << EPOCH_BITS) - 1


class EpochSpaceExhausted(Exception):
    """Every epoch up to ``MAX_EPOCH`` was handed out since the last push (the caller turns this into an
    admission error naming the job)."""

    def __init__(self, last: int) -> None:
        self.last = last
        super().__init__(f"epoch {last} was the last one; the pipeline must be pushed again before the next")


class EpochCounter:
    """Hands out job epochs and learns when the pipeline was pushed. Thread-safe.

    The job manager takes an epoch when it admits a job and gives it back once the job is off the switch; the
    switch layer reports every push it makes. ``last`` is where the counter stands (0: nothing handed out since
    the registers were zeroed); a constructor argument so that tests can start near the end of the range.
    """

    def __init__(self, last: int = 0) -> None:
        if not 0 <= last <= MAX_EPOCH:
            raise ValueError(f"last epoch {last} is not in 0..{MAX_EPOCH}")
        self._lock = threading.Lock()
        self._last = last
        self._held: set[int] = set()  # epochs of jobs that may still have entries on the switch

    @property
    def last(self) -> int:
        """The last epoch handed out, or after a push the largest one that can come back into a copy (0: none)."""
        with self._lock:
            return self._last

    @property
    def remaining(self) -> int:
        """How many more epochs can be handed out before the pipeline must be pushed again."""
        with self._lock:
            return MAX_EPOCH - self._last

    def take(self) -> int:
        """The next epoch, held until ``give_back``; raises EpochSpaceExhausted rather than reuse one."""
        with self._lock:
            if self._last >= MAX_EPOCH:
                raise EpochSpaceExhausted(self._last)
            self._last += 1
            self._held.add(self._last)
            return self._last

    def give_back(self, epoch: int) -> None:
        """The job that held ``epoch`` was removed (its entries deleted, or their deletion queued).

        The epoch is never handed out again before the next push; giving it back only lets that push start the
        counter lower. Entries whose deletion is still queued do not matter then: the push erases them.
        """
        with self._lock:
            self._held.discard(epoch)

    def pipeline_pushed(self, installed: Iterable[int] = ()) -> None:
        """The pipeline was pushed: every register is zero. ``installed``: epochs of the jobs re-installed now.

        After the push, a copy can only come to hold the epoch of a job that is (or is about to be) installed:
        those re-installed by the switch layer, and those handed out but not given back (a job being admitted or
        torn down concurrently). The counter restarts just above the largest of them, so at 1 when there is none.
        Restarting at 1 regardless would be wrong: a job re-installed with epoch 7 writes 7 into its copies again,
        and once it ended, a later job on its range that got 7 would find those copies live.
        """
        with self._lock:
            self._last = max([*self._held, *installed], default=0)
