"""Rounds that complete: the RESULT every worker gets, for 1, 2 and 32 workers and every payload size, with the
exponent, flags (ABORT, MISMATCH) and op the round's contributions make."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.constants import LANE_COUNTS, Flag, JobStat
from netagg.wire import size_for_lanes

from .frames import OP, assert_result, update_frame, wrap_int32
from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import Job, make_workers

pytestmark = pytest.mark.netns

INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min


@pytest.mark.parametrize("n", [1, 2, 32])
def test_round_completes_with_one_rewritten_result_per_worker(sut: SwitchUnderTest, n: int) -> None:
    # 32 workers share the four ports (eight each), told apart by IPv4 address and UDP port.
    job = Job(job=1, workers=make_workers(1, n, PORTS), pool_base=0, pool_size=8, size=0, epoch=1)
    sut.admit(job)
    watch = sut.watch(job.job)
    exps = {w.id: (w.id * 7) % 11 - 5 for w in job.workers}
    flags = {w.id: int(w.id == n - 1) for w in job.workers}
    sut.complete_round(job, tsi=7, slot=3, set=1, lanes=random_lanes(n, job.workers, 32), exps=exps, flags=flags)
    watch.wait(stats={(1, JobStat.AGGREGATED): n, (1, JobStat.COMPLETED): 1})


def test_partial_round_sends_nothing_and_is_not_a_drop(sut: SwitchUnderTest) -> None:
    job = Job(job=2, workers=make_workers(2, 3, PORTS), pool_base=0, pool_size=4, size=0, epoch=1)
    sut.admit(job)
    lanes = random_lanes(3, job.workers, 32)
    watch = sut.watch(job.job)
    for w in job.workers[:2]:
        sut.send_update(job, w, tsi=0, slot=0, set=0, lanes=lanes[w.id])
    watch.wait(stats={(2, JobStat.AGGREGATED): 2})
    sut.ports.expect_silence()
    sut.complete_round(job, tsi=0, slot=0, set=0, lanes=lanes, order=[2])
    watch.wait(stats={(2, JobStat.AGGREGATED): 3, (2, JobStat.COMPLETED): 1})


def test_lanes_sum_with_int32_wraparound(sut: SwitchUnderTest) -> None:
    job = Job(job=3, workers=make_workers(3, 2, PORTS), pool_base=0, pool_size=2, size=0, epoch=1)
    sut.admit(job)
    a = np.full(32, INT32_MAX, dtype=np.int32)
    b = np.ones(32, dtype=np.int32)
    a[1], b[1] = INT32_MIN, -1  # wraps to INT32_MAX
    a[2], b[2] = INT32_MIN, INT32_MIN  # wraps to 0
    a[3], b[3] = -5, 3
    total = sut.complete_round(job, tsi=0, slot=0, set=0, lanes={0: a, 1: b})
    assert total[0] == INT32_MIN and total[1] == INT32_MAX and total[2] == 0 and total[3] == -2


@pytest.mark.parametrize(
    "exps, flags, want_exp",
    [
        ((-5, 3, -128), (0, 1, 0), 3),
        ((-5, -7, -100), (0, 0, 0), -5),
        ((127, -128, 0), (1, 1, 0), 127),
        ((-128, -128, -128), (0, 0, 1), -128),
        ((0, 0, 0), (0, 2, 0), 0),
        ((4, 2, 0), (1, 2, 2), 4),
    ],
)
def test_exponent_is_signed_max_and_flags_are_ored(
    sut: SwitchUnderTest, exps: tuple[int, ...], flags: tuple[int, ...], want_exp: int
) -> None:
    job = Job(job=4, workers=make_workers(4, 3, PORTS), pool_base=0, pool_size=2, size=0, epoch=1)
    sut.admit(job)
    assert max(exps) == want_exp  # complete_round expects the signed max; this pins the case's intent
    sut.complete_round(job, tsi=1, slot=1, set=0, lanes=random_lanes(4, job.workers, 32),
                       exps=dict(enumerate(exps)), flags=dict(enumerate(flags)))


@pytest.mark.parametrize("lanes", LANE_COUNTS)
def test_every_payload_size(sut: SwitchUnderTest, lanes: int) -> None:
    job = Job(job=5, workers=make_workers(5, 2, PORTS), pool_base=0, pool_size=2, size=size_for_lanes(lanes), epoch=1)
    sut.admit(job)
    watch = sut.watch(job.job)
    sut.complete_round(job, tsi=0, slot=1, set=1, lanes=random_lanes(lanes, job.workers, lanes))
    watch.wait(stats={(5, JobStat.AGGREGATED): 2, (5, JobStat.COMPLETED): 1})


def test_update_without_udp_checksum_is_aggregated(sut: SwitchUnderTest) -> None:
    job = Job(job=6, workers=make_workers(6, 2, PORTS), pool_base=0, pool_size=1, size=0, epoch=1)
    sut.admit(job)
    lanes = random_lanes(6, job.workers, 32)
    watch = sut.watch(job.job)
    w0 = job.workers[0]
    sut.ports.send(w0.port, update_frame(w0.endpoint, sut.agg, job=6, tsi=0, slot=0, set=0, lanes=lanes[0],
                                         key=w0.key, udp_checksum=0))
    watch.wait(stats={(6, JobStat.AGGREGATED): 1})
    sut.complete_round(job, tsi=0, slot=0, set=0, lanes=lanes, order=[1])


@pytest.mark.parametrize(
    "order", [[0, 1, 2], [1, 0, 2], [2, 0, 1]], ids=["mismatch-second", "mismatch-first", "mismatch-last"]
)
def test_op_mismatch_is_flagged_and_the_first_op_kept_while_the_sums_still_add(
    sut: SwitchUnderTest, order: list[int]
) -> None:
    job = Job(job=7, workers=make_workers(7, 3, PORTS), pool_base=0, pool_size=1, size=0, epoch=1)
    sut.admit(job)
    other = OP ^ 0x00FF_0000
    ops = {0: OP, 1: other, 2: OP}  # worker 1 runs another collective
    lanes = random_lanes(70, job.workers, 32)
    watch = sut.watch(job.job)
    for sent, wid in enumerate(order, start=1):
        w = job.workers[wid]
        sut.send_update(job, w, tsi=3, slot=0, set=1, lanes=lanes[wid], op=ops[wid], flags=int(wid == 2))
        # Frames of different ports may reach the pipeline in any order: the order is the point here.
        watch.wait(stats={(7, JobStat.AGGREGATED): sent, (7, JobStat.COMPLETED): int(sent == len(order))})
    results = sut.expect_results(job.workers)
    total = wrap_int32(np.sum([lanes[w.id].astype(np.int64) for w in job.workers], axis=0))
    for w in job.workers:
        assert_result(results[w.id], worker=w.endpoint, agg=sut.agg, job=7, tsi=3, slot=0, set=1, exp=0,
                      flags=Flag.MISMATCH | Flag.NONFINITE, key=w.key, op=ops[order[0]], lanes=total)
    # The copy's next round (after one on the other set) starts from its first contribution: no MISMATCH is left.
    sut.complete_round(job, tsi=4, slot=0, set=0, lanes=random_lanes(71, job.workers, 32))
    sut.complete_round(job, tsi=5, slot=0, set=1, lanes=random_lanes(72, job.workers, 32),
                       ops=dict.fromkeys(ops, other))


def test_abort_of_one_worker_reaches_every_worker(sut: SwitchUnderTest) -> None:
    job = Job(job=8, workers=make_workers(8, 4, PORTS), pool_base=0, pool_size=2, size=0, epoch=1)
    sut.admit(job)
    lanes = random_lanes(80, job.workers, 32)
    watch = sut.watch(job.job)
    for w in job.workers:
        sut.send_update(job, w, tsi=0, slot=1, set=0, lanes=lanes[w.id], flags=Flag.ABORT if w.id == 2 else 0)
    results = sut.expect_results(job.workers)
    total = wrap_int32(np.sum([lanes[w.id].astype(np.int64) for w in job.workers], axis=0))
    for w in job.workers:
        assert_result(results[w.id], worker=w.endpoint, agg=sut.agg, job=8, tsi=0, slot=1, set=0, exp=0,
                      flags=Flag.ABORT, key=w.key, lanes=total)
    # A retransmission is answered from the slot with the round's flags, not its own.
    w0 = job.workers[0]
    sut.send_update(job, w0, tsi=0, slot=1, set=0, lanes=lanes[0], flags=Flag.NONFINITE)
    assert_result(sut.expect_results([w0])[0], worker=w0.endpoint, agg=sut.agg, job=8, tsi=0, slot=1, set=0, exp=0,
                  flags=Flag.ABORT, key=w0.key, lanes=total)
    watch.wait(stats={(8, JobStat.AGGREGATED): 4, (8, JobStat.COMPLETED): 1, (8, JobStat.RETRANSMIT_ANSWERED): 1})
