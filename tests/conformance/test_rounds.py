"""Which round a contribution belongs to: serial-number tsi order, delayed duplicates, the 2^32 wrap.

A complete copy opens a new round only for a tsi newer than its own (docs/protocol.md step 7); a worker whose bit
is set is answered only for the copy's current tsi.
"""

from __future__ import annotations

import pytest

from netagg.constants import DropReason, JobStat

from .frames import assert_result
from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import Job, make_workers

pytestmark = pytest.mark.netns

U32_MAX = (1 << 32) - 1


def _job(job: int, workers: int = 2) -> Job:
    return Job(job=job, workers=make_workers(job, workers, PORTS), pool_base=0, pool_size=1, size=0, epoch=1)


def test_delayed_duplicate_of_a_completed_round_does_not_open_a_round(sut: SwitchUnderTest) -> None:
    """Two workers, one slot, chunks 0-3 (sets 0, 1, 0, 1) complete; then a delayed copy of A's chunk 0 arrives.

    Taken for a new round on set 0, it would leave that copy waiting for B's chunk 0 forever: A's chunk 4 would
    be a pending duplicate there and B's stale, and the slot would never complete again.
    """
    job = _job(1)
    sut.admit(job)
    a = job.workers[0]
    lanes = [random_lanes(10 + k, job.workers, 32) for k in range(6)]
    watch = sut.watch(job.job)
    for k in range(4):
        sut.complete_round(job, tsi=k, slot=0, set=k % 2, lanes=lanes[k], quiet=0)
    sut.send_update(job, a, tsi=0, slot=0, set=0, lanes=lanes[0][a.id])
    watch.wait(drops={(1, DropReason.STALE): 1}, stats={(1, JobStat.AGGREGATED): 8, (1, JobStat.COMPLETED): 4})
    sut.ports.expect_silence()
    for k in (4, 5):
        sut.complete_round(job, tsi=k, slot=0, set=k % 2, lanes=lanes[k], order=[1, 0])
    watch.wait(drops={(1, DropReason.STALE): 1}, stats={(1, JobStat.AGGREGATED): 12, (1, JobStat.COMPLETED): 6})


def test_duplicates_several_rounds_old_are_stale(sut: SwitchUnderTest) -> None:
    job = _job(2)
    sut.admit(job)
    a, b = job.workers
    lanes = [random_lanes(20 + k, job.workers, 32) for k in range(10)]
    watch = sut.watch(job.job)
    for k in range(8):
        sut.complete_round(job, tsi=k, slot=0, set=k % 2, lanes=lanes[k], quiet=0)
    # Set 0 last completed chunk 6 and set 1 chunk 7; these are copies of chunks 0, 1, 2 and 5, from both workers.
    for w, k in ((a, 0), (b, 2), (a, 1), (b, 5)):
        sut.send_update(job, w, tsi=k, slot=0, set=k % 2, lanes=lanes[k][w.id])
    watch.wait(drops={(2, DropReason.STALE): 4}, stats={(2, JobStat.AGGREGATED): 16, (2, JobStat.COMPLETED): 8})
    sut.ports.expect_silence()
    sut.complete_round(job, tsi=8, slot=0, set=0, lanes=lanes[8])
    sut.complete_round(job, tsi=9, slot=0, set=1, lanes=lanes[9])
    watch.wait(drops={(2, DropReason.STALE): 4}, stats={(2, JobStat.AGGREGATED): 20, (2, JobStat.COMPLETED): 10})


def test_rounds_continue_across_the_tsi_wrap(sut: SwitchUnderTest) -> None:
    """tsi runs 2^32-3, 2^32-2, 2^32-1, 0, 1, 2 on one slot: 0 follows 2^32-1, and 2^32-1 is older than 1."""
    job = _job(3)
    sut.admit(job)
    a, b = job.workers
    tsis = [(U32_MAX - 2 + k) & U32_MAX for k in range(6)]
    lanes = [random_lanes(30 + k, job.workers, 32) for k in range(7)]
    watch = sut.watch(job.job)
    for k, tsi in enumerate(tsis):
        sut.complete_round(job, tsi=tsi, slot=0, set=k % 2, lanes=lanes[k], order=[k % 2, 1 - k % 2], quiet=0)
    # Delayed copies from before the wrap: chunk 2^32-1 (set 0) and chunk 2^32-2 (set 1).
    sut.send_update(job, a, tsi=U32_MAX, slot=0, set=0, lanes=lanes[2][a.id])
    sut.send_update(job, b, tsi=U32_MAX - 1, slot=0, set=1, lanes=lanes[1][b.id])
    watch.wait(drops={(3, DropReason.STALE): 2}, stats={(3, JobStat.AGGREGATED): 12, (3, JobStat.COMPLETED): 6})
    sut.ports.expect_silence()
    sut.complete_round(job, tsi=3, slot=0, set=0, lanes=lanes[6])
    watch.wait(drops={(3, DropReason.STALE): 2}, stats={(3, JobStat.AGGREGATED): 14, (3, JobStat.COMPLETED): 7})


def test_a_worker_whose_bit_is_set_is_answered_only_for_the_current_tsi(sut: SwitchUnderTest) -> None:
    job = _job(4)
    sut.admit(job)
    a, b = job.workers
    lanes = [random_lanes(40 + k, job.workers, 32) for k in range(5)]
    watch = sut.watch(job.job)
    for k in range(2):
        sut.complete_round(job, tsi=k, slot=0, set=k % 2, lanes=lanes[k], quiet=0)
    total = sut.complete_round(job, tsi=2, slot=0, set=0, lanes=lanes[2])
    # Round 2 on set 0 is complete and A's bit is set there. A delayed copy of A's chunk 0 is not a retransmission
    # of round 2: answering it would hand A round 2's sum under tsi 0.
    sut.send_update(job, a, tsi=0, slot=0, set=0, lanes=lanes[0][a.id])
    watch.wait(drops={(4, DropReason.STALE): 1}, stats={(4, JobStat.AGGREGATED): 6, (4, JobStat.COMPLETED): 3})
    sut.ports.expect_silence()
    # A retransmission of chunk 2 is answered with the stored RESULT, to A alone.
    sut.send_update(job, a, tsi=2, slot=0, set=0, lanes=lanes[2][a.id])
    answer = sut.expect_results([a])[a.id]
    assert_result(answer, worker=a.endpoint, agg=sut.agg, job=4, tsi=2, slot=0, set=0, exp=0, flags=0, key=a.key,
                  lanes=total)
    # An open round: A contributed chunk 4 on set 0. Its delayed chunk 2 there is stale; a copy of chunk 4 pending.
    sut.complete_round(job, tsi=3, slot=0, set=1, lanes=lanes[3])
    sut.send_update(job, a, tsi=4, slot=0, set=0, lanes=lanes[4][a.id])
    sut.send_update(job, a, tsi=2, slot=0, set=0, lanes=lanes[2][a.id])
    sut.send_update(job, a, tsi=4, slot=0, set=0, lanes=lanes[4][a.id])
    watch.wait(drops={(4, DropReason.STALE): 2, (4, DropReason.DUPLICATE_PENDING): 1},
               stats={(4, JobStat.AGGREGATED): 9, (4, JobStat.COMPLETED): 4, (4, JobStat.RETRANSMIT_ANSWERED): 1})
    sut.ports.expect_silence()
    sut.complete_round(job, tsi=4, slot=0, set=0, lanes=lanes[4], order=[b.id])
    watch.wait(drops={(4, DropReason.STALE): 2, (4, DropReason.DUPLICATE_PENDING): 1},
               stats={(4, JobStat.AGGREGATED): 10, (4, JobStat.COMPLETED): 5, (4, JobStat.RETRANSMIT_ANSWERED): 1})
