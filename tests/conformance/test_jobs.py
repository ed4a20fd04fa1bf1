"""Two jobs at once, on disjoint pools behind the same ports: each gets its own sums, nothing crosses over."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.constants import JobStat

from .frames import assert_result, wrap_int32
from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import Job, make_workers

pytestmark = pytest.mark.netns


def test_two_jobs_with_disjoint_pools_do_not_interfere(sut: SwitchUnderTest) -> None:
    a = Job(job=1, workers=make_workers(1, 3, PORTS), pool_base=0, pool_size=4, size=0, epoch=1)
    b = Job(job=2, workers=make_workers(2, 2, PORTS[1:]), pool_base=4, pool_size=4, size=0, epoch=1)
    sut.admit(a, b)
    watch = sut.watch(a.job, b.job)
    for rnd in range(4):
        # Same slot, set and tsi in both jobs, contributions interleaved; b completes first.
        slot, set_, tsi = rnd % 2, (rnd // 2) % 2, rnd
        la, lb = random_lanes(200 + rnd, a.workers, 32), random_lanes(300 + rnd, b.workers, 32)
        for job, w, lanes in ((a, a.workers[0], la), (b, b.workers[0], lb), (a, a.workers[1], la)):
            sut.send_update(job, w, tsi=tsi, slot=slot, set=set_, lanes=lanes[w.id], exp=job.job)
        sut.send_update(b, b.workers[1], tsi=tsi, slot=slot, set=set_, lanes=lb[1], exp=b.job)
        _check(sut, b, sut.expect_results(b.workers), lb, tsi=tsi, slot=slot, set_=set_)
        sut.send_update(a, a.workers[2], tsi=tsi, slot=slot, set=set_, lanes=la[2], exp=a.job)
        _check(sut, a, sut.expect_results(a.workers), la, tsi=tsi, slot=slot, set_=set_)
    watch.wait(stats={(1, JobStat.AGGREGATED): 12, (1, JobStat.COMPLETED): 4,
                      (2, JobStat.AGGREGATED): 8, (2, JobStat.COMPLETED): 4})


def _check(sut: SwitchUnderTest, job: Job, results: dict[int, bytes], lanes: dict[int, np.ndarray], *,
           tsi: int, slot: int, set_: int) -> None:
    total = wrap_int32(np.sum([lanes[w.id].astype(np.int64) for w in job.workers], axis=0))
    for w in job.workers:
        assert_result(results[w.id], worker=w.endpoint, agg=sut.agg, job=job.job, tsi=tsi, slot=slot, set=set_,
                      exp=job.job, flags=0, key=w.key, lanes=total)
