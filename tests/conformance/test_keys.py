"""Worker keys: an UPDATE with a worker's source but not its key adds nothing; every RESULT carries the key of
the worker it goes to (docs/protocol.md steps 4 and 9)."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.constants import NUM_DROP_REASONS, DropReason, JobStat

from .frames import parse_result, update_frame
from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import Job, make_workers

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("forged_key", ["flipped-bit", "key-of-another-worker", "zero"])
def test_forged_update_with_the_right_source_but_a_wrong_key_adds_nothing(
    sut: SwitchUnderTest, forged_key: str
) -> None:
    job = Job(job=1, workers=make_workers(1, 3, PORTS), pool_base=0, pool_size=2, size=0, epoch=1)
    sut.admit(job)
    w0, w1, w2 = job.workers
    lanes = random_lanes(50, job.workers, 32)
    watch = sut.watch(job.job)
    sut.send_update(job, w0, tsi=5, slot=1, set=0, lanes=lanes[0])
    watch.wait(stats={(1, JobStat.AGGREGATED): 1})
    # A host on another port forges w2's address and port, trying to add its lanes and complete the round early.
    key = {"flipped-bit": w2.key ^ 0x100, "key-of-another-worker": w1.key, "zero": 0}[forged_key]
    forged = update_frame(w2.endpoint, sut.agg, job=1, tsi=5, slot=1, set=0, lanes=np.full(32, 12345, np.int32),
                          key=key)  # fmt: skip
    sut.ports.send(w1.port, forged)
    watch.wait(drops={(1, DropReason.BAD_KEY): 1}, stats={(1, JobStat.AGGREGATED): 1})
    assert watch.byte_delta("job_drops", 1 * NUM_DROP_REASONS + DropReason.BAD_KEY) == len(forged)
    sut.ports.expect_silence()
    # The real w1 and w2 complete the round: the sum is theirs and w0's alone, and w2 is not a duplicate.
    sut.complete_round(job, tsi=5, slot=1, set=0, lanes=lanes, order=[1, 2])
    watch.wait(drops={(1, DropReason.BAD_KEY): 1}, stats={(1, JobStat.AGGREGATED): 3, (1, JobStat.COMPLETED): 1})


def test_every_result_copy_carries_its_receivers_key(sut: SwitchUnderTest) -> None:
    job = Job(job=2, workers=make_workers(2, 6, PORTS), pool_base=0, pool_size=1, size=0, epoch=1)
    sut.admit(job)
    assert len({w.key for w in job.workers}) == job.n
    lanes = random_lanes(51, job.workers, 32)
    sut.complete_round(job, tsi=0, slot=0, set=0, lanes=lanes)  # asserts each RESULT whole, key included
    # Said explicitly: the copies differ in their key, each the receiver's; so does the answer to a retransmission.
    for w in job.workers:
        sut.send_update(job, w, tsi=0, slot=0, set=0, lanes=lanes[w.id])
        answer = sut.expect_results([w])[w.id]
        assert parse_result(answer).header.key == w.key, f"worker {w.id}"
