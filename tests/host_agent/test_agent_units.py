"""In-process pieces of the host agent: join answers, timers, staging, error messages."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.controller.client import BadJoinAnswer
from netagg.host_agent.collective import Collective, RecentOps
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentInputError,
    AllReduceTimeout,
    CollectiveAbortedError,
    CollectiveMismatchError,
)
from netagg.host_agent.session import JoinResult
from netagg.host_agent.staging import join_int32, split_int32, stage
from netagg.host_agent.timers import DeadlineHeap, RtoConfig, RttEstimator
from netagg.wire import EXP_MIN

pytestmark = pytest.mark.unit

ANSWER = {
    "job_id": 3,
    "worker_id": 1,
    "world_size": 4,
    "lanes": 128,
    "slots": 32,
    "epoch": 9,
    "switch": {"mac": "02:00:00:00:00:01", "addr": "10.0.0.254", "port": 48864},
    "lease_seconds": 10.0,
    "key": 0xC0FFEE11,
}


def test_join_answer_from_json() -> None:
    session = JoinResult.from_json(ANSWER, job="train", rank=1)
    assert (session.job_id, session.worker_id, session.size_code, session.slots) == (3, 1, 2, 32)
    assert session.switch.addr == "10.0.0.254" and session.lease_seconds == 10.0
    assert session.switch_generation is None  # a controller that does not say: not watched
    assert JoinResult.from_json({**ANSWER, "switch_generation": 4}, job="train", rank=1).switch_generation == 4


def test_one_join_result_for_the_controller_client_and_the_agent() -> None:
    import netagg.controller.client as controller_client
    import netagg.host_agent.session as session

    assert session.JoinResult is controller_client.JoinResult
    assert session.SwitchEndpoint is controller_client.SwitchEndpoint
    assert not hasattr(session.JoinResult, "from_answer")  # no getter accepting a mapping or an object


@pytest.mark.parametrize(
    "change, message",
    [({"lanes": 100}, "100 lanes"), ({"worker_id": 4}, "worker id 4"), ({"job_id": 300}, "job id 300")],
)
def test_join_answer_out_of_range(change: dict, message: str) -> None:
    with pytest.raises(BadJoinAnswer, match=message):
        JoinResult.from_json({**ANSWER, **change}, job="train", rank=1)


def test_join_answer_missing_field() -> None:
    with pytest.raises(BadJoinAnswer, match="malformed.*epoch"):
        JoinResult.from_json({k: v for k, v in ANSWER.items() if k != "epoch"}, job="train", rank=1)


def test_join_answer_key_is_required_and_32_bits_and_never_shown() -> None:
    session = JoinResult.from_json(ANSWER, job="train", rank=1)
    assert session.key == 0xC0FFEE11
    assert str(0xC0FFEE11) not in repr(session) and "c0ffee11" not in repr(session).lower()
    with pytest.raises(BadJoinAnswer, match="malformed.*'key'.*older than wire format v2"):
        JoinResult.from_json({k: v for k, v in ANSWER.items() if k != "key"}, job="train", rank=1)
    with pytest.raises(BadJoinAnswer, match="key of job 'train' rank 1 does not fit"):
        JoinResult.from_json({**ANSWER, "key": 1 << 32}, job="train", rank=1)


def test_rtt_estimator_follows_samples_and_backs_off() -> None:
    config = RtoConfig(initial=0.02, minimum=0.005, maximum=0.5)
    est = RttEstimator(config)
    assert est.rto == 0.02
    for _ in range(50):
        est.sample(0.001)
    assert est.rto == config.minimum  # a fast path settles at the floor
    for _ in range(20):
        est.backoff()
    assert est.rto == config.maximum
    est.sample(10.0)  # a huge sample (a late peer) is clipped to the maximum
    assert est.rto == config.maximum


def test_the_timeout_stays_above_the_queue_the_window_tolerates() -> None:
    """With congestion control the RTT may legitimately grow by the window's delay target before it reacts: the
    timeout keeps that slack above the smoothed RTT, however steady the samples (a steady queue has no variance)."""
    config = RtoConfig(initial=0.05, minimum=0.005, maximum=0.5)
    plain, slack = RttEstimator(config), RttEstimator(config, slack=0.020)
    for _ in range(200):
        plain.sample(0.010)
        slack.sample(0.010)
    assert plain.rto == pytest.approx(0.010, abs=1e-4)  # srtt + 4 * rttvar, rttvar decayed to ~0
    assert slack.rto == pytest.approx(0.030, abs=1e-4)  # a 15 ms queue step fires no timeout


def test_rto_config_validation() -> None:
    with pytest.raises(ValueError):
        RtoConfig(initial=1.0, minimum=0.1, maximum=0.5)


def test_deadline_heap_pops_in_order_and_drops_stale_entries() -> None:
    heap = DeadlineHeap()
    heap.push(3.0, np.array([1]), np.array([0]))
    heap.push(1.0, np.array([0]), np.array([0]))
    heap.push(2.0, np.array([2]), np.array([5]))
    assert heap.next_deadline() == 1.0
    slots, gens = heap.pop_expired(2.5)
    assert slots.tolist() == [0, 2] and gens.tolist() == [0, 5]
    generations = np.array([0, 1, 0])  # slot 1 moved on: its entry is stale
    heap.discard_stale(generations)
    assert heap.next_deadline() is None and len(heap) == 0


def test_deadline_heap_keeps_the_live_slots_of_a_burst() -> None:
    heap = DeadlineHeap()
    heap.push(1.0, np.array([4, 5, 6]), np.array([2, 2, 2]))  # one entry for a burst of three slots
    heap.discard_stale(np.array([0, 0, 0, 0, 3, 2, 3]))  # slots 4 and 6 got their RESULT
    assert heap.next_deadline() == 1.0 and len(heap) == 1
    slots, gens = heap.pop_expired(1.0)
    assert slots.tolist() == [5] and gens.tolist() == [2]


def test_staging_pads_the_last_block_and_finds_exponents() -> None:
    x = np.array([0.75, -3.0, 0.0], dtype=np.float32)
    staged, _ = stage(x, lanes=32, inplace=True)
    assert staged.num_blocks == 1 and staged.count == 3
    assert np.all(staged.block(0)[3:] == 0) and staged.block(0)[:3].tolist() == [0.75, -3.0, 0.0]
    assert staged.exps.tolist() == [2]  # 3.0 < 2**2
    zeros, _ = stage(np.zeros(70, np.float32), lanes=32, inplace=True)
    assert zeros.exps.tolist() == [EXP_MIN] * 3


def test_staging_int32_travels_as_two_lanes_per_element() -> None:
    staged, _ = stage(np.array([5, -7, 2**30 + 5, -(2**31)], np.int32), lanes=32, inplace=False)
    assert staged.exact and staged.exps.tolist() == [0] and staged.encoding == "int32x2"
    assert staged.block(0)[:8].tolist() == [5, 0, 0xFFF9, -1, 5, 2**14, 0, -(2**15)]  # (low, high) pairs
    assert np.all(staged.block(0)[8:] == 0)
    assert stage(np.zeros(17, np.int32), lanes=32, inplace=False)[0].num_blocks == 2  # 34 lanes


def test_int32_lane_pairs_sum_and_wrap_as_int32_addition() -> None:
    """Any values on up to 32 ranks: each lane's sum fits an int32 lane, and the recombined sum is the int32 sum
    with wrap-around, as torch and gloo add int32 (the same decision on every rank, whatever its values)."""
    rng = np.random.default_rng(5)
    for n in (2, 3, 32):
        values = [rng.integers(-(2**31), 2**31, size=500, dtype=np.int32) for _ in range(n)]
        values[0][:3] = [2**31 - 1, -(2**31), 2**30 + 5]
        values[1][:3] = [2**31 - 1, -(2**31), 1]
        lanes = np.sum([split_int32(v, 32).astype(np.int64) for v in values], axis=0)
        assert np.all(np.abs(lanes) < 2**31)  # the switch's int32 lane sums never wrap
        want = np.sum(values, axis=0, dtype=np.int32)  # numpy's int32 addition wraps like torch's
        np.testing.assert_array_equal(join_int32(lanes.astype(np.int32).reshape(-1), 500), want)
    assert join_int32(np.array([5 + 1, 2**14], np.int32), 1).tolist() == [2**30 + 6]


def test_collective_op_id_is_a_stable_hash_of_what_the_ranks_share() -> None:
    a = Collective("all-reduce", 5, 100, "float32", "bfp32")
    assert a.op_id == Collective("all-reduce", 5, 100, "float32", "bfp32").op_id  # pure: same on every rank
    assert a.op_id == 0x7E1F85D6  # blake2b, not Python's per-process hash()
    others = {
        Collective("all-reduce", 6, 100, "float32", "bfp32").op_id,
        Collective("all-reduce", 5, 200, "float32", "bfp32").op_id,
        Collective("all-reduce", 5, 100, "float16", "bfp32").op_id,
        Collective("all-reduce", 5, 100, "int32", "int32x2").op_id,
        Collective("all_reduce", 5, 100, "float32", "bfp32").op_id,
    }
    assert a.op_id not in others and len(others) == 5
    # Ranks that gave up on the same collective agree on its op whatever they knew about their inputs.
    unread = Collective("all-reduce", 5, None, None, "abort")
    assert unread.op_id == Collective("all-reduce", 5, 3, "int64", "abort").op_id
    assert str(a) == "all-reduce #5 (100 float32 elements)"
    assert Collective.from_dict(a.to_dict()) == a


def test_recent_ops_name_an_op_id() -> None:
    recent = RecentOps(limit=2)
    ops = [Collective("all-reduce", i, 10 * i, "float32", "bfp32") for i in range(3)]
    for i, op in enumerate(ops):
        recent.add(op.op_id, i, op)
    assert "this rank's all-reduce #2 (20 float32 elements)" in recent.describe(ops[2].op_id)
    assert "not one of this rank's recent collectives" in recent.describe(ops[0].op_id)  # evicted
    assert f"{ops[0].op_id:#010x}" in recent.describe(ops[0].op_id)


def test_staging_refuses_what_it_cannot_sum() -> None:
    with pytest.raises(AgentInputError, match="numpy array or a torch CPU tensor"):
        stage([1.0, 2.0], lanes=32, inplace=True)
    with pytest.raises(AgentInputError, match="complex64"):
        stage(np.zeros(3, np.complex64), lanes=32, inplace=True)
    read_only = np.zeros(3, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(AgentInputError, match="read-only"):
        stage(read_only, lanes=32, inplace=True)
    stage(read_only, lanes=32, inplace=False)  # fine when the result is a new array


def test_staging_torch_refuses_leaf_requiring_grad() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(AgentInputError, match="requires grad"):
        stage(torch.zeros(3, requires_grad=True), lanes=32, inplace=True)
    with pytest.raises(AgentInputError, match="torch dtype torch.int64"):
        stage(torch.zeros(3, dtype=torch.int64), lanes=32, inplace=True)


def test_timeout_message_names_job_rank_slots_and_wait() -> None:
    err = AllReduceTimeout(
        job="train",
        job_id=4,
        rank=2,
        op_index=17,
        waited=3.25,
        elapsed=9.5,
        done_chunks=5,
        total_chunks=20,
        deadline=3.0,
        missing=[(s, 1000 + s) for s in range(8)],
        unsent_chunks=12,
        retransmissions=40,
    )
    text = str(err)
    for part in (
        "job 'train'",
        "rank 2",
        "#17",
        "3.25 s",
        "8 slot(s) still missing",
        "slot 0 tsi 1000",
        "(3 more)",
        "12 chunk(s) not sent",
        "9.50 s since it started",
        "5 of 20 chunks",
    ):
        assert part in text
    assert isinstance(err, TimeoutError)


def test_divergence_messages_name_job_rank_both_sides_and_what_to_do() -> None:
    ours = Collective("all-reduce", 5, 100, "float32", "bfp32")
    mismatch = CollectiveMismatchError(
        job="train", job_id=4, rank=0, op_index=5, descriptor=ours, theirs="op 0x12345678 (not one of this rank's)"
    )
    text = str(mismatch)
    for part in ("all-reduce #5 of job 'train'", "rank 0", "100 float32 elements", f"{ours.op_id:#010x}",
                 "op 0x12345678", "same all-reduces", "join again on every rank"):  # fmt: skip
        assert part in text, part
    peer = str(CollectiveAbortedError(job="train", job_id=4, rank=1, op_index=5, descriptor=ours))
    assert "rank 1" in peer and "another rank gave up on it" in peer and "100 float32 elements" in peer
    own = str(CollectiveAbortedError(job="train", job_id=4, rank=0, op_index=5, descriptor=ours, local_error="bad"))
    assert "rank 0 of job 'train' (id 4) gave up on all-reduce #5 (bad)" in own
    broken = str(AgentBrokenError(mismatch))
    assert "unusable" in broken and text in broken
