"""Retransmitted UPDATEs: dropped while the round is pending, answered from the slot once it is complete."""

from __future__ import annotations

import pytest

from netagg.constants import DropReason, JobStat

from .frames import assert_result
from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import Job, make_workers

pytestmark = pytest.mark.netns


def test_retransmission_before_completion_is_dropped_as_pending(sut: SwitchUnderTest) -> None:
    job = Job(job=1, workers=make_workers(1, 2, PORTS), pool_base=0, pool_size=4, size=0, epoch=1)
    sut.admit(job)
    lanes = random_lanes(11, job.workers, 32)
    w0 = job.workers[0]
    watch = sut.watch(job.job)
    sut.send_update(job, w0, tsi=4, slot=2, set=1, lanes=lanes[0], exp=1)
    sut.send_update(job, w0, tsi=4, slot=2, set=1, lanes=lanes[0], exp=1)
    watch.wait(drops={(1, DropReason.DUPLICATE_PENDING): 1}, stats={(1, JobStat.AGGREGATED): 1})
    sut.ports.expect_silence()
    # The duplicate added nothing: the round completes with each worker counted once.
    sut.complete_round(job, tsi=4, slot=2, set=1, lanes=lanes, exps={0: 1}, order=[1])
    watch.wait(drops={(1, DropReason.DUPLICATE_PENDING): 1},
               stats={(1, JobStat.AGGREGATED): 2, (1, JobStat.COMPLETED): 1})


def test_retransmission_after_completion_gets_the_stored_result_alone(sut: SwitchUnderTest) -> None:
    job = Job(job=2, workers=make_workers(2, 3, PORTS), pool_base=0, pool_size=4, size=0, epoch=1)
    sut.admit(job)
    lanes = random_lanes(12, job.workers, 32)
    exps, flags = {0: -3, 1: 2, 2: -9}, {0: 0, 1: 1, 2: 0}
    watch = sut.watch(job.job)
    total = sut.complete_round(job, tsi=9, slot=1, set=0, lanes=lanes, exps=exps, flags=flags)
    for w in (job.workers[1], job.workers[1], job.workers[0]):
        sut.send_update(job, w, tsi=9, slot=1, set=0, lanes=lanes[w.id], exp=exps[w.id], flags=flags[w.id])
        answer = sut.expect_results([w])[w.id]
        assert_result(answer, worker=w.endpoint, agg=sut.agg, job=2, tsi=9, slot=1, set=0, exp=2, flags=1,
                      key=w.key, lanes=total)
    watch.wait(stats={(2, JobStat.AGGREGATED): 3, (2, JobStat.COMPLETED): 1,
                      (2, JobStat.RETRANSMIT_ANSWERED): 3})
