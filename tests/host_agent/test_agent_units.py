"""In-process pieces of the host agent: join answers, timers, staging, error messages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from netagg.host_agent.errors import AgentInputError, AllReduceTimeout, JoinError
from netagg.host_agent.session import JoinResult
from netagg.host_agent.staging import stage
from netagg.host_agent.timers import DeadlineHeap, RtoConfig, RttEstimator
from netagg.wire import EXP_MIN, WireError

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
}


def test_join_answer_from_mapping_and_object() -> None:
    session = JoinResult.from_answer(ANSWER, job="train", rank=1)
    assert (session.job_id, session.worker_id, session.size_code, session.slots) == (3, 1, 2, 32)
    assert session.switch.addr == "10.0.0.254" and session.lease_seconds == 10.0

    @dataclass
    class Sw:
        mac: str
        addr: str
        port: int

    @dataclass
    class Answer:
        job_id: int
        worker_id: int
        world_size: int
        lanes: int
        slots: int
        epoch: int
        switch: Sw

    obj = Answer(3, 1, 4, 128, 32, 9, Sw("02:00:00:00:00:01", "10.0.0.254", 48864))
    assert JoinResult.from_answer(obj, job="train", rank=1) == JoinResult.from_answer(
        {k: v for k, v in ANSWER.items() if k != "lease_seconds"}, job="train", rank=1
    )


@pytest.mark.parametrize(
    "change, message",
    [({"lanes": 100}, "100 lanes"), ({"worker_id": 4}, "worker id 4"), ({"job_id": 300}, "job id 300")],
)
def test_join_answer_out_of_range(change: dict, message: str) -> None:
    with pytest.raises((JoinError, WireError), match=message):
        JoinResult.from_answer({**ANSWER, **change}, job="train", rank=1)


def test_join_answer_missing_field() -> None:
    with pytest.raises(JoinError, match="malformed.*epoch"):
        JoinResult.from_answer({k: v for k, v in ANSWER.items() if k != "epoch"}, job="train", rank=1)


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


def test_rto_config_validation() -> None:
    with pytest.raises(ValueError):
        RtoConfig(initial=1.0, minimum=0.1, maximum=0.5)


def test_deadline_heap_pops_in_order_and_drops_stale_entries() -> None:
    heap = DeadlineHeap()
    heap.push(3.0, 1, 0)
    heap.push(1.0, 0, 0)
    heap.push(2.0, 2, 5)
    assert heap.next_deadline() == 1.0
    assert heap.pop_expired(2.5) == [(0, 0), (2, 5)]
    generations = [0, 1, 0]  # slot 1 moved on: its entry is stale
    heap.discard_stale(generations)
    assert heap.next_deadline() is None and len(heap) == 0


def test_staging_pads_the_last_block_and_finds_exponents() -> None:
    x = np.array([0.75, -3.0, 0.0], dtype=np.float32)
    staged, _ = stage(x, lanes=32, num_workers=2, inplace=True)
    assert staged.blocks.shape == (1, 32) and staged.count == 3
    assert np.all(staged.blocks[0, 3:] == 0)
    assert staged.exps.tolist() == [2]  # 3.0 < 2**2
    zeros, _ = stage(np.zeros(70, np.float32), lanes=32, num_workers=2, inplace=True)
    assert zeros.exps.tolist() == [EXP_MIN] * 3


def test_staging_int32_is_exact_and_checked() -> None:
    staged, _ = stage(np.array([5, -7], np.int32), lanes=32, num_workers=3, inplace=False)
    assert staged.exact and staged.exps.tolist() == [0]
    with pytest.raises(AgentInputError, match="could wrap"):
        stage(np.array([2**30], np.int32), lanes=32, num_workers=3, inplace=False)


def test_staging_refuses_what_it_cannot_sum() -> None:
    with pytest.raises(AgentInputError, match="numpy array or a torch CPU tensor"):
        stage([1.0, 2.0], lanes=32, num_workers=2, inplace=True)
    with pytest.raises(AgentInputError, match="complex64"):
        stage(np.zeros(3, np.complex64), lanes=32, num_workers=2, inplace=True)
    read_only = np.zeros(3, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(AgentInputError, match="read-only"):
        stage(read_only, lanes=32, num_workers=2, inplace=True)
    stage(read_only, lanes=32, num_workers=2, inplace=False)  # fine when the result is a new array


def test_staging_torch_refuses_leaf_requiring_grad() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(AgentInputError, match="requires grad"):
        stage(torch.zeros(3, requires_grad=True), lanes=32, num_workers=2, inplace=True)
    with pytest.raises(AgentInputError, match="torch dtype torch.int64"):
        stage(torch.zeros(3, dtype=torch.int64), lanes=32, num_workers=2, inplace=True)


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
