"""A slot's two copies over many rounds, stale contributions, and epochs (a new admission starts clean)."""

from __future__ import annotations

import pytest

from netagg.constants import DropReason, JobStat

from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import Job, make_workers

pytestmark = pytest.mark.netns

ROUNDS = 24


def test_slots_are_reused_through_both_sets_over_many_rounds(sut: SwitchUnderTest) -> None:
    # Chunk k goes to slot k % 2, set (k // 2) % 2: every copy is reused ROUNDS / 4 times, as a worker's
    # sliding window does. Arrival order rotates so that every worker is sometimes first and sometimes last.
    job = Job(job=3, workers=make_workers(3, 3, PORTS), pool_base=10, pool_size=2, size=0, epoch=1)
    sut.admit(job)
    watch = sut.watch(job.job)
    for k in range(ROUNDS):
        order = [(k + i) % job.n for i in range(job.n)]
        sut.complete_round(job, tsi=k, slot=k % 2, set=(k // 2) % 2, lanes=random_lanes(100 + k, job.workers, 32),
                           exps={w.id: (k + w.id) % 5 - 2 for w in job.workers}, order=order, quiet=0)
    sut.ports.expect_silence()
    watch.wait(stats={(3, JobStat.AGGREGATED): ROUNDS * job.n, (3, JobStat.COMPLETED): ROUNDS})


def test_delayed_duplicate_of_a_seen_round_is_stale(sut: SwitchUnderTest) -> None:
    job = Job(job=1, workers=make_workers(1, 2, PORTS), pool_base=0, pool_size=1, size=0, epoch=1)
    sut.admit(job)
    w0 = job.workers[0]
    first = random_lanes(1, job.workers, 32)
    watch = sut.watch(job.job)
    sut.complete_round(job, tsi=0, slot=0, set=0, lanes=first)
    # w0 moves on to the other set, which clears its bit in set 0 ...
    sut.send_update(job, w0, tsi=1, slot=0, set=1, lanes=first[0])
    # ... then its long-delayed duplicate of tsi 0 reaches the switch: not a new round, not a retransmission.
    sut.send_update(job, w0, tsi=0, slot=0, set=0, lanes=first[0])
    watch.wait(drops={(1, DropReason.STALE): 1}, stats={(1, JobStat.AGGREGATED): 3, (1, JobStat.COMPLETED): 1})
    sut.ports.expect_silence()


def test_contribution_with_another_tsi_to_a_pending_round_is_stale(sut: SwitchUnderTest) -> None:
    job = Job(job=2, workers=make_workers(2, 3, PORTS), pool_base=0, pool_size=1, size=0, epoch=1)
    sut.admit(job)
    w0, w1, _ = job.workers
    lanes = [random_lanes(20 + k, job.workers, 32) for k in range(3)]
    watch = sut.watch(job.job)
    sut.complete_round(job, tsi=0, slot=0, set=0, lanes=lanes[0])
    sut.complete_round(job, tsi=1, slot=0, set=1, lanes=lanes[1])  # clears every bit in set 0
    sut.send_update(job, w0, tsi=2, slot=0, set=0, lanes=lanes[2][0])  # opens round tsi 2 on set 0
    sut.send_update(job, w1, tsi=0, slot=0, set=0, lanes=lanes[0][1])  # w1's delayed tsi 0: must not be added
    watch.wait(drops={(2, DropReason.STALE): 1}, stats={(2, JobStat.AGGREGATED): 7, (2, JobStat.COMPLETED): 2})
    sut.ports.expect_silence()
    sut.complete_round(job, tsi=2, slot=0, set=0, lanes=lanes[2], order=[1, 2])
    watch.wait(drops={(2, DropReason.STALE): 1}, stats={(2, JobStat.AGGREGATED): 9, (2, JobStat.COMPLETED): 3})


def test_new_epoch_on_the_same_slots_starts_clean(sut: SwitchUnderTest) -> None:
    job = Job(job=4, workers=make_workers(4, 2, PORTS), pool_base=5, pool_size=2, size=0, epoch=1)
    sut.admit(job)
    w0 = job.workers[0]
    old = random_lanes(40, job.workers, 32)
    watch = sut.watch(job.job)
    sut.complete_round(job, tsi=0, slot=0, set=0, lanes=old)  # slot 0 / set 0 complete, tsi 0
    sut.send_update(job, w0, tsi=0, slot=1, set=1, lanes=old[0], exp=100)  # slot 1 / set 1 left pending
    watch.wait(stats={(4, JobStat.AGGREGATED): 3, (4, JobStat.COMPLETED): 1})

    # Re-admission with a new epoch: both copies must behave as empty, although the old state matches the
    # new rounds' tsi, worker bits and exponent.
    job2 = job.with_epoch(2)
    sut.readmit(job2)
    new = [random_lanes(41 + k, job.workers, 32) for k in range(2)]
    sut.complete_round(job2, tsi=0, slot=0, set=0, lanes=new[0])
    sut.complete_round(job2, tsi=0, slot=1, set=1, lanes=new[1], exps={0: -1, 1: -2})
    watch.wait(stats={(4, JobStat.AGGREGATED): 7, (4, JobStat.COMPLETED): 3})
