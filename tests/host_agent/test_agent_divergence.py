"""Ranks that do not run the same collective fail loudly, on every rank, and never sum unrelated chunks.

The cases a torch user met before every chunk carried its collective's op id and ABORT existed: 100 vs 200
elements (both ranks returned; one held its own values in the tail), 1000 vs 2000 (one rank returned, the other
timed out, and the next, matched all-reduce returned a wrong sum), an int32 sum that one rank refused locally while
the other went on, and a local error on one rank shifting the stream by one all-reduce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from agent_harness import WAIT, job, run_ranks, wait_for
from fake_agg_switch import FakeSwitch, Impairment

from netagg.constants import MsgType
from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.collective import Collective
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentInputError,
    CollectiveAbortedError,
    CollectiveMismatchError,
)
from netagg.wire import HEADER_BYTES, LANE_DTYPE, pack_header

pytestmark = pytest.mark.loopback

#: The agent's deadline in these tests: a failure must come long before it (within about a round trip).
DEADLINE = 30.0
#: What "long before the deadline" means on a busy 2-core machine.
FAST = 10.0


def _outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn's value, or the exception it raised (so every rank's outcome can be checked)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def _assert_unusable(clients: list[AllReduceClient]) -> None:
    """A matched all-reduce after the failure raises on every rank instead of returning a sum."""
    outcomes = run_ranks(clients, lambda r, c: _outcome(c.allreduce, np.ones(10, np.float32), inplace=False))
    for rank, out in enumerate(outcomes):
        assert isinstance(out, AgentBrokenError), f"rank {rank} returned {out!r} from an unusable job"
        assert "unusable" in str(out)


@pytest.mark.parametrize("counts", [(100, 200), (1000, 2000)])
def test_different_element_counts_fail_on_every_rank_fast(counts: tuple[int, int]) -> None:
    with job(2, deadline=DEADLINE) as (switch, clients):
        start = time.monotonic()
        outcomes = run_ranks(
            clients, lambda r, c: _outcome(c.allreduce, np.full(counts[r], r + 1.0, np.float32), inplace=False)
        )
        elapsed = time.monotonic() - start
        assert elapsed < FAST, f"the mismatch took {elapsed:.1f} s to surface (deadline {DEADLINE} s)"
        assert switch.counters["mismatch"] > 0
        for rank, out in enumerate(outcomes):
            assert isinstance(out, CollectiveMismatchError), f"rank {rank}: {out!r}"
            text = str(out)
            assert f"all-reduce #0 of job {switch.job!r}" in text and f"on rank {rank}" in text
            assert f"{counts[rank]} float32 elements" in text  # our side
            assert "first contribution carried" in text  # the other side (its op)
            assert out.op_index == 0 and out.descriptor.count == counts[rank]
        _assert_unusable(clients)


def test_int32_sum_is_decided_alike_on_every_rank_and_wraps_as_int32() -> None:
    """2**30 + 5 on one rank and 1 on the other: the true sum fits int32 and every rank returns it; the stream
    stays in step, so the next all-reduce is right too."""
    values = [2**30 + 5, 1]
    with job(2, deadline=DEADLINE) as (_, clients):
        sums = run_ranks(clients, lambda r, c: c.allreduce(np.array([values[r]], np.int32), inplace=False))
        assert [s.tolist() for s in sums] == [[1073741830], [1073741830]]
        wrapped = run_ranks(clients, lambda r, c: c.allreduce(np.array([2**31 - 1, -(2**31)], np.int32)))
        assert [w.tolist() for w in wrapped] == [[-2, 0]] * 2  # int32 addition's wrap-around, as torch and gloo
        after = run_ranks(clients, lambda r, c: c.allreduce(np.ones(1, np.float32), inplace=False))
        assert [a.tolist() for a in after] == [[2.0], [2.0]]


def _read_only() -> np.ndarray:
    x = np.ones(300, np.float32)
    x.flags.writeable = False
    return x


BAD_INPUTS: dict[str, Callable[[], Any]] = {
    "read-only in place": _read_only,
    "unsupported dtype": lambda: np.ones(300, np.int64),
    "not a tensor": lambda: [1.0, 2.0],
}


@pytest.mark.parametrize("lossy", [False, True], ids=["lossless", "lossy"])
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_a_local_error_on_one_rank_fails_the_all_reduce_on_every_rank(bad: str, lossy: bool) -> None:
    impairment = Impairment(loss=0.2) if lossy else Impairment()
    switch = FakeSwitch(2, ingress=impairment, egress=impairment, seed=3)
    with job(2, switch, deadline=DEADLINE) as (_, clients):
        good = np.ones(300, np.float32)
        assert run_ranks(clients, lambda r, c: c.allreduce(good, inplace=False).tolist()) == [[2.0] * 300] * 2
        start = time.monotonic()
        outcomes = run_ranks(
            clients, lambda r, c: _outcome(c.allreduce, BAD_INPUTS[bad]() if r == 0 else np.ones(300, np.float32))
        )
        elapsed = time.monotonic() - start
        local, peer = outcomes
        assert isinstance(local, AgentInputError), local
        assert local.op_index == 1 and "rank 0 of job 'test-job' gave up on all-reduce #1" in str(local)
        assert "the other ranks fail it too" in str(local)
        assert isinstance(peer, CollectiveAbortedError), peer
        assert "all-reduce #1 of job 'test-job'" in str(peer) and "another rank gave up on it" in str(peer)
        assert "300 float32 elements" in str(peer)
        assert elapsed < FAST, f"rank 1 learnt of rank 0's error after {elapsed:.1f} s (deadline {DEADLINE} s)"
        _assert_unusable(clients)
        with pytest.raises(AgentBrokenError, match="rank 0 of job 'test-job' .*gave up on all-reduce #1"):
            clients[0].allreduce(good)


def test_every_rank_giving_up_on_the_same_all_reduce_keeps_the_stream() -> None:
    """Each rank raised its own error at the same point: the streams still agree, nothing needs to fail."""
    with job(2, deadline=DEADLINE) as (_, clients):
        outcomes = run_ranks(clients, lambda r, c: _outcome(c.allreduce, np.ones(4, np.int64)))
        assert all(isinstance(o, AgentInputError) and o.op_index == 0 for o in outcomes), outcomes
        after = run_ranks(clients, lambda r, c: c.allreduce(np.full(3, r + 1.0, np.float32), inplace=False))
        assert [a.tolist() for a in after] == [[3.0] * 3] * 2


def test_ranks_out_of_step_are_named_from_this_ranks_own_descriptors() -> None:
    """Rank 1 skipped collective 0 (as when one rank routes a call elsewhere): its collective 1 meets rank 0's 0.
    The RESULT carries the first contribution's op, rank 1's #1, which rank 0 knows as its own next collective."""
    switch = FakeSwitch(2)
    with job(2, switch, deadline=DEADLINE) as (_, clients):
        switch.hold()
        late = clients[1].allreduce_async(np.ones(10, np.float32), descriptor=Collective("step", 1, 10, "float32"))
        wait_for(lambda: clients[1].stats.warmups_sent >= 1, "rank 1's first UPDATE")
        first = clients[0].allreduce_async(np.ones(10, np.float32), descriptor=Collective("step", 0, 10, "float32"))
        second = clients[0].allreduce_async(np.ones(10, np.float32), descriptor=Collective("step", 1, 10, "float32"))
        wait_for(lambda: clients[0].stats.warmups_sent >= 2, "rank 0's UPDATEs")
        switch.release()
        with pytest.raises(CollectiveMismatchError) as info:
            first.result(WAIT)
        assert "step #0 of job 'test-job' (id 7) on rank 0" in str(info.value)
        assert "first contribution carried op" in str(info.value)
        assert "= this rank's step #1 (10 float32 elements)" in str(info.value)
        with pytest.raises(CollectiveMismatchError, match=r"step #1 \(the client's all-reduce #0\) .* rank 1"):
            late.result(WAIT)
        with pytest.raises(AgentBrokenError):
            second.result(WAIT)


def test_mismatch_on_a_data_round_fails_that_all_reduce_after_the_matched_one() -> None:
    """One slot, everything queued at once: the mismatched chunk goes out as the data round announced by the
    matched all-reduce before it (no warm-up), and the MISMATCH comes back on it."""
    switch = FakeSwitch(2)
    with job(2, switch, window=1, deadline=DEADLINE) as (_, clients):
        switch.hold()
        futures = [
            [c.allreduce_async(np.ones(10, np.float32), inplace=False),
             c.allreduce_async(np.ones(10 * (r + 1), np.float32), inplace=False)]
            for r, c in enumerate(clients)
        ]  # fmt: skip
        switch.release()
        for rank, (matched, mismatched) in enumerate(futures):
            assert matched.result(WAIT).tolist() == [2.0] * 10
            with pytest.raises(CollectiveMismatchError, match=f"all-reduce #1 .* on rank {rank}"):
                mismatched.result(WAIT)
        for c in clients:
            assert c.stats.warmups_sent == 1  # only the first round: the mismatched chunk was a data round


def test_a_result_with_another_workers_key_is_counted_and_ignored() -> None:
    switch = FakeSwitch(1)
    with job(1, switch, deadline=DEADLINE) as (_, clients):
        client = clients[0]
        switch.hold()
        future = client.allreduce_async(np.ones(10, np.int32), inplace=False)
        wait_for(lambda: client.stats.warmups_sent == 1, "the warm-up UPDATE")
        forged = bytearray(HEADER_BYTES + 4 * switch.lanes)
        descriptor = Collective("all-reduce", 0, 10, "int32", "int32x2")
        pack_header(forged, 0, msg_type=MsgType.RESULT, size=switch.size, job=switch.job_id, tsi=0, slot=0, set=0,
                    exp=0, key=client.session.key ^ 1, op=descriptor.op_id)  # fmt: skip
        np.frombuffer(forged, dtype=LANE_DTYPE, offset=HEADER_BYTES)[:] = 999
        switch.inject(0, bytes(forged))  # from the switch's own address: only the key gives it away
        wait_for(lambda: client.stats.forged == 1, "the forged RESULT to be counted")
        switch.release()
        assert future.result(WAIT).tolist() == [1] * 10
    assert client.stats.results == 2  # (read once the transport stopped) the real warm-up and data RESULTs only
    assert switch.counters["bad_key"] == 0  # and every UPDATE carried this worker's key
