"""Which round a contribution belongs to, and what a round's RESULT carries (wire format v2), in process.

Serial-number order of tsi (delayed duplicates never open a round, across the 2^32 wrap too), the key check,
``op`` and MISMATCH, ABORT, and the per-receiver key of every RESULT copy. docs/protocol.md, steps 4 and 7.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pytest
from test_pipeline import assert_result_for, parse_result, random_lanes
from test_pipeline_contract import OP, Job, drops, job_drops, job_stats, loaded_pipeline, make_job, update_frame

from netagg.constants import DropReason, Flag, JobStat
from netagg.softswitch.pipeline import Pipeline
from netagg.wire import U32_MAX

pytestmark = pytest.mark.unit

HALF = 1 << 31


def complete(
    pipeline: Pipeline,
    job: Job,
    *,
    tsi: int,
    slot: int = 0,
    set_: int,
    order: list[int] | None = None,
    ops: Mapping[int, int] | None = None,
    flags: Mapping[int, int] | None = None,
) -> list[bytes]:
    """Every worker sends its chunk (in ``order`` of worker ids); assert that only the last one completes the
    round and that every worker gets the sum with the first sender's op. Returns the RESULT frames by worker."""
    order = order if order is not None else [w.worker_id for w in job.workers]
    ops = ops or {}
    values = {w.worker_id: random_lanes(32) for w in job.workers}
    out: list[tuple[int, bytes]] = []
    for i, wid in enumerate(order):
        w = job.workers[wid]
        frame = update_frame(w, tsi=tsi, slot=slot, set_=set_, lanes=values[wid], op=ops.get(wid, OP),
                             flags=(flags or {}).get(wid, 0))  # fmt: skip
        out = pipeline.process(frame, w.port)
        assert (out == []) == (i < len(order) - 1), f"worker {wid} (position {i}) got {len(out)} frames"
    total = np.sum([values[w.worker_id] for w in job.workers], axis=0, dtype=np.int64).astype(np.int32)
    for copy, w in zip(out, job.workers):
        assert_result_for(copy, w, tsi=tsi, slot=slot, set_=set_, total=total, op=ops.get(order[0], OP))
    return [frame for _, frame in out]


def send(
    pipeline: Pipeline, job: Job, wid: int, *, tsi: int, set_: int, slot: int = 0, **kw: int
) -> list[tuple[int, bytes]]:
    """Worker ``wid`` sends a chunk of random lanes; returns what the switch sends."""
    w = job.workers[wid]
    return pipeline.process(update_frame(w, tsi=tsi, slot=slot, set_=set_, lanes=random_lanes(32), **kw), w.port)


# ------------------------------------------------------------------------------------ serial-number order


def test_delayed_duplicate_of_a_completed_round_does_not_open_a_round() -> None:
    """Two workers, one slot, chunks 0-3 (sets 0, 1, 0, 1) complete; then a delayed copy of A's chunk 0 arrives.

    Taken for a new round, it would leave set 0 waiting for B's chunk 0 forever: chunk 4 (set 0) would then be a
    pending duplicate for A and stale for B, and the slot would never complete again.
    """
    job = make_job(1, 2, pool_size=1)
    state, pipeline = loaded_pipeline(job)
    for k in range(4):
        complete(pipeline, job, tsi=k, set_=k % 2)
    assert send(pipeline, job, 0, tsi=0, set_=0) == []
    assert drops(state) == {DropReason.STALE: 1}
    for k in range(4, 8):
        complete(pipeline, job, tsi=k, set_=k % 2, order=[k % 2, 1 - k % 2])
    assert drops(state) == job_drops(state, 1) == {DropReason.STALE: 1}
    assert job_stats(state, 1) == {JobStat.AGGREGATED: 16, JobStat.COMPLETED: 8}


def test_duplicates_several_rounds_old_are_stale() -> None:
    job = make_job(2, 2, pool_size=1)
    state, pipeline = loaded_pipeline(job)
    for k in range(8):
        complete(pipeline, job, tsi=k, set_=k % 2)
    # Set 0 last completed chunk 6, set 1 chunk 7; every worker's bit there was cleared by its next send.
    for wid, tsi in ((0, 0), (1, 2), (0, 4), (1, 6), (0, 1), (1, 5)):
        assert send(pipeline, job, wid, tsi=tsi, set_=tsi % 2) == [], (wid, tsi)
    assert drops(state) == job_drops(state, 2) == {DropReason.STALE: 6}
    complete(pipeline, job, tsi=8, set_=0)
    complete(pipeline, job, tsi=9, set_=1)
    assert job_stats(state, 2) == {JobStat.AGGREGATED: 20, JobStat.COMPLETED: 10}


def test_tsi_order_holds_across_the_wrap() -> None:
    job = make_job(3, 2, pool_size=1)
    state, pipeline = loaded_pipeline(job)
    start = U32_MAX - 2
    tsis = [(start + k) & U32_MAX for k in range(8)]  # 2^32-3 .. 2^32-1, 0 .. 4
    for k, tsi in enumerate(tsis):
        complete(pipeline, job, tsi=tsi, set_=k % 2, order=[k % 2, 1 - k % 2])
    # Delayed copies from before the wrap are older than the rounds after it.
    assert send(pipeline, job, 1, tsi=U32_MAX, set_=(U32_MAX - start) % 2) == []
    assert send(pipeline, job, 0, tsi=U32_MAX - 2, set_=0) == []
    assert drops(state) == {DropReason.STALE: 2}
    assert job_stats(state, 3) == {JobStat.AGGREGATED: 16, JobStat.COMPLETED: 8}


@pytest.mark.parametrize(
    ("ahead", "opens"),
    [(1, True), (HALF - 1, True), (HALF, False), (HALF + 1, False), (U32_MAX, False), (0, False)],
    ids=["next", "half-minus-one", "half", "half-plus-one", "one-behind", "same"],
)
@pytest.mark.parametrize("slot_tsi", [5, U32_MAX - 1])
def test_only_a_newer_tsi_opens_a_round_on_a_complete_copy(slot_tsi: int, ahead: int, opens: bool) -> None:
    """``tsi - slot_tsi`` modulo 2^32 in 1 .. 2^31 - 1 is newer; 2^31 ahead is as far behind, so not newer."""
    job = make_job(4, 2)
    state, pipeline = loaded_pipeline(job)
    regs = pipeline.registers
    regs.epoch[0], regs.bitmap[0], regs.count[0], regs.tsi[0] = job.epoch, 0, 0, slot_tsi
    tsi = (slot_tsi + ahead) & U32_MAX
    assert send(pipeline, job, 0, tsi=tsi, set_=0) == []
    if opens:
        assert (int(regs.bitmap[0]), int(regs.count[0]), int(regs.tsi[0])) == (1, 1, tsi)
        assert drops(state) == {}
    else:
        assert (int(regs.bitmap[0]), int(regs.count[0]), int(regs.tsi[0])) == (0, 0, slot_tsi)
        assert drops(state) == {DropReason.STALE: 1}


def test_a_fresh_copy_takes_any_tsi() -> None:
    """A copy of another epoch holds nothing of this job: even a tsi 'older' than its stale one opens a round."""
    job = make_job(5, 1)
    _, pipeline = loaded_pipeline(job)
    regs = pipeline.registers
    regs.epoch[0], regs.bitmap[0], regs.count[0], regs.tsi[0] = job.epoch + 1, 1, 0, 100
    ((_, frame),) = send(pipeline, job, 0, tsi=99, set_=0)
    assert parse_result(frame)["header"].tsi == 99


def test_a_worker_whose_bit_is_set_is_answered_only_for_the_current_tsi() -> None:
    job = make_job(6, 2, pool_size=1)
    state, pipeline = loaded_pipeline(job)
    a = job.workers[0]
    values = [random_lanes(32), random_lanes(32)]
    complete(pipeline, job, tsi=0, set_=0)
    complete(pipeline, job, tsi=1, set_=1)
    outputs = [pipeline.process(update_frame(w, tsi=2, set_=0, slot=0, lanes=v), w.port)
               for w, v in zip(job.workers, values)]  # fmt: skip
    assert [len(out) for out in outputs] == [0, 2]
    total = values[0] + values[1]
    # Round 2 on set 0 is complete and A's bit is set there. A delayed copy of A's chunk 0 is not a retransmission
    # of round 2 (answering it would hand A round 2's sum under tsi 0) ...
    assert send(pipeline, job, 0, tsi=0, set_=0) == []
    assert drops(state) == {DropReason.STALE: 1}
    # ... while a retransmission of chunk 2 is answered with the stored sum, to A alone.
    (answer,) = pipeline.process(update_frame(a, tsi=2, set_=0, slot=0, lanes=values[0]), a.port)
    assert_result_for(answer, a, tsi=2, slot=0, set_=0, total=total)
    # An open round: A contributed to chunk 4 on set 0. Its delayed chunk 2 is stale, a copy of chunk 4 pending.
    complete(pipeline, job, tsi=3, set_=1)
    assert send(pipeline, job, 0, tsi=4, set_=0) == []
    assert send(pipeline, job, 0, tsi=2, set_=0) == []
    assert send(pipeline, job, 0, tsi=4, set_=0) == []
    assert drops(state) == {DropReason.STALE: 2, DropReason.DUPLICATE_PENDING: 1}
    assert len(send(pipeline, job, 1, tsi=4, set_=0)) == 2
    assert job_stats(state, 6) == {
        JobStat.AGGREGATED: 10,
        JobStat.COMPLETED: 5,
        JobStat.RETRANSMIT_ANSWERED: 1,
    }


# ---------------------------------------------------------------------------------------------------- key


def test_forged_update_with_the_right_source_but_a_wrong_key_is_dropped() -> None:
    job = make_job(7, 3, pool_size=2)
    state, pipeline = loaded_pipeline(job)
    values = [random_lanes(32) for _ in job.workers]
    for w in job.workers[:2]:
        assert pipeline.process(update_frame(w, tsi=0, slot=1, set_=0, lanes=values[w.worker_id]), w.port) == []
    c = job.workers[2]
    forged = update_frame(c, tsi=0, slot=1, set_=0, lanes=np.full(32, 1000, np.int32), key=c.key ^ 0x8000_0000)
    assert pipeline.process(forged, c.port) == []
    assert drops(state) == job_drops(state, 7) == {DropReason.BAD_KEY: 1}
    assert int(state.counters["drops"].bytes[DropReason.BAD_KEY]) == len(forged)
    out = pipeline.process(update_frame(c, tsi=0, slot=1, set_=0, lanes=values[2]), c.port)
    total = np.sum(values, axis=0, dtype=np.int64).astype(np.int32)
    for copy, w in zip(out, job.workers):
        assert_result_for(copy, w, tsi=0, slot=1, set_=0, total=total)
    assert job_stats(state, 7) == {JobStat.AGGREGATED: 3, JobStat.COMPLETED: 1}
    assert drops(state) == {DropReason.BAD_KEY: 1}


def test_every_result_copy_carries_its_receivers_key() -> None:
    job = make_job(8, 5)
    _, pipeline = loaded_pipeline(job)
    assert len({w.key for w in job.workers}) == 5
    results = complete(pipeline, job, tsi=0, set_=1)
    assert [parse_result(f)["header"].key for f in results] == [w.key for w in job.workers]
    # The answer to a retransmission carries the retransmitting worker's key.
    ((_, answer),) = send(pipeline, job, 3, tsi=0, set_=1)
    assert parse_result(answer)["header"].key == job.workers[3].key


# ----------------------------------------------------------------------------------------- op and flags


def test_op_mismatch_flags_the_round_keeps_the_first_op_and_still_adds() -> None:
    job = make_job(9, 3)
    _, pipeline = loaded_pipeline(job)
    other = OP ^ 0xFFFF_0000
    # complete() asserts the sum of all three and the op of the first sender.
    for f in complete(pipeline, job, tsi=0, set_=0, ops={1: other}):
        assert parse_result(f)["header"].flags == Flag.MISMATCH
    for f in complete(pipeline, job, tsi=1, set_=1, order=[1, 0, 2], ops={1: other}):
        assert parse_result(f)["header"].flags == Flag.MISMATCH
    # The next round on a copy starts with the first contribution's flags: no MISMATCH left over.
    for f in complete(pipeline, job, tsi=2, set_=0, ops={0: other, 1: other, 2: other}):
        assert parse_result(f)["header"].flags == 0


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({2: Flag.ABORT}, Flag.ABORT),
        ({0: Flag.ABORT}, Flag.ABORT),
        ({0: Flag.NONFINITE, 1: Flag.ABORT}, Flag.NONFINITE | Flag.ABORT),
        ({1: Flag.ABORT | Flag.NONFINITE, 2: Flag.ABORT}, Flag.NONFINITE | Flag.ABORT),
    ],
)
def test_abort_is_ored_into_every_result_copy(flags: dict[int, int], want: int) -> None:
    job = make_job(10, 3)
    _, pipeline = loaded_pipeline(job)
    for f in complete(pipeline, job, tsi=0, set_=0, flags=flags):
        assert parse_result(f)["header"].flags == want


def test_a_mismatched_retransmission_changes_nothing() -> None:
    """A retransmission is answered from the slot: its own op and flags are not merged in."""
    job = make_job(11, 2)
    _, pipeline = loaded_pipeline(job)
    complete(pipeline, job, tsi=0, set_=0)
    ((_, answer),) = send(pipeline, job, 1, tsi=0, set_=0, op=OP + 1, flags=Flag.ABORT)
    h = parse_result(answer)["header"]
    assert (h.op, h.flags) == (OP, 0)


# ----------------------------------------------------------------------------------------- internal errors


def test_an_internal_error_is_counted_as_such_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(12, 2)
    state, pipeline = loaded_pipeline(job)

    def broken(*args: object) -> list[tuple[int, bytes]]:
        raise RuntimeError("a bug in the data path")

    monkeypatch.setattr(pipeline, "_aggregate", broken)
    caplog.set_level(logging.ERROR, logger="netagg.softswitch.pipeline")
    for _ in range(3):
        assert send(pipeline, job, 0, tsi=0, set_=0) == []
    assert drops(state) == {DropReason.INTERNAL_ERROR: 3}
    assert pipeline.internal_errors == 3
    (record,) = caplog.records
    assert "INTERNAL_ERROR" in record.getMessage() and record.exc_info is not None
