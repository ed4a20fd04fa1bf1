"""All-reduce results through the fake switch: correctness, int32 exactness, loss, duplicates, reordering."""

from __future__ import annotations

import numpy as np
import pytest
from agent_harness import allreduce_all, assert_close_to_reference, job, run_ranks
from fake_agg_switch import FakeSwitch, Impairment

from netagg.host_agent.errors import AgentInputError

pytestmark = pytest.mark.loopback


def _floats(n: int, count: int, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Ranks differ in magnitude so shared exponents differ from each rank's own.
    return [(rng.standard_normal(count) * scale * (r + 1)).astype(np.float32) for r in range(n)]


@pytest.mark.parametrize("num_workers", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [1, 255, 1000, 20000])
def test_float_sum_within_quantizer_bound(num_workers: int, count: int) -> None:
    inputs = _floats(num_workers, count, seed=count + num_workers)
    with job(num_workers) as (switch, clients):
        results = allreduce_all(clients, [[x] for x in inputs])
    for rank in range(num_workers):
        assert results[rank][0].dtype == np.float32
        assert_close_to_reference(results[rank][0], inputs, switch.lanes)
        np.testing.assert_array_equal(results[rank][0], results[0][0])  # every rank gets the same bits


def test_multi_mib_tensor_and_lanes_not_dividing_the_size() -> None:
    count = (3 << 20) // 4 + 77  # ~3 MiB of float32, not a multiple of the lanes
    inputs = _floats(2, count, seed=5, scale=1e-3)
    with job(2) as (switch, clients):
        results = allreduce_all(clients, [[x] for x in inputs])
    assert_close_to_reference(results[0][0], inputs, switch.lanes)
    np.testing.assert_array_equal(results[0][0], results[1][0])


@pytest.mark.parametrize("lanes", [32, 64, 128])
def test_smaller_packets(lanes: int) -> None:
    inputs = _floats(3, 5000, seed=lanes)
    with job(3, FakeSwitch(3, lanes=lanes)) as (_, clients):
        assert clients[0].session.lanes == lanes
        results = allreduce_all(clients, [[x] for x in inputs])
    assert_close_to_reference(results[2][0], inputs, lanes)


def test_int32_is_exact_over_the_whole_range() -> None:
    """Any int32 values on any rank: the sum is int32 addition's, wrap-around included (as torch and gloo)."""
    n = 4
    rng = np.random.default_rng(3)
    inputs = [rng.integers(-(2**31), 2**31, size=3001, dtype=np.int32) for _ in range(n)]
    inputs[0][:4] = [2**31 - 1, -(2**31), 0, 1]
    inputs[1][:4] = [1, -1, 0, 2**31 - 1]
    with job(n) as (_, clients):
        results = allreduce_all(clients, [[x] for x in inputs])
    expected = np.sum(inputs, axis=0, dtype=np.int32)
    for r in range(n):
        assert results[r][0].dtype == np.int32
        np.testing.assert_array_equal(results[r][0], expected)


def test_unsupported_dtype_is_refused() -> None:
    with job(1) as (_, clients), pytest.raises(AgentInputError, match="int64"):
        clients[0].allreduce(np.zeros(4, dtype=np.int64))


def test_in_place_and_shapes() -> None:
    n = 2
    inputs = [np.arange(60, dtype=np.float32).reshape(3, 4, 5) * (r + 1) for r in range(n)]
    originals = [x.copy() for x in inputs]
    with job(n) as (switch, clients):
        returned = run_ranks(clients, lambda r, c: c.allreduce(inputs[r]))
    for r in range(n):
        assert returned[r] is inputs[r]
        assert_close_to_reference(inputs[r], originals, switch.lanes)


def test_non_contiguous_and_float16_float64() -> None:
    n = 2
    base = [np.linspace(-3, 3, 2000, dtype=np.float32).reshape(40, 50) * (r + 1) for r in range(n)]
    views = [b.T for b in base]  # non-contiguous
    halves = [b[:7].astype(np.float16) for b in base]
    doubles = [b[:3].astype(np.float64) for b in base]
    with job(n) as (switch, clients):
        results = allreduce_all(clients, [[views[r], halves[r], doubles[r]] for r in range(n)])
    assert results[0][0].shape == (50, 40)
    assert_close_to_reference(results[0][0], views, switch.lanes)
    assert results[0][1].dtype == np.float16 and results[0][2].dtype == np.float64
    assert_close_to_reference(results[1][2], [d.astype(np.float32) for d in doubles], switch.lanes)
    (expected16,) = allreduce_all_reference(halves, switch.lanes)
    np.testing.assert_array_equal(results[0][1], expected16)


def allreduce_all_reference(halves: list[np.ndarray], lanes: int) -> list[np.ndarray]:
    """float16 results must be the float32 result rounded once: run the same values as float32."""
    with job(len(halves), FakeSwitch(len(halves), lanes=lanes)) as (_, clients):
        results = allreduce_all(clients, [[h.astype(np.float32)] for h in halves])
    return [results[0][0].astype(np.float16)]


def test_zero_size_and_nonfinite_blocks() -> None:
    n = 3
    lanes = 256
    inputs = _floats(n, 4 * lanes, seed=9)
    inputs[1][lanes + 3] = np.nan  # block 1
    inputs[2][3 * lanes] = np.inf  # block 3
    inputs[0][2 * lanes] = 3e38  # block 2: >= 2**127 counts as non-finite
    with job(n) as (_, clients):
        results = allreduce_all(clients, [[np.zeros(0, np.float32), inputs[r]] for r in range(n)])
    for r in range(n):
        assert results[r][0].shape == (0,)
        out = results[r][1].reshape(4, lanes)
        assert np.all(np.isnan(out[1:])) and not np.any(np.isnan(out[0]))
    clean = [x[:lanes] for x in inputs]
    assert_close_to_reference(results[0][1][:lanes], clean, lanes)


IMPAIRMENTS: dict[str, dict[str, object]] = {
    "switch-ingress-1%": {"ingress": Impairment(loss=0.01)},
    "switch-ingress-10%": {"ingress": Impairment(loss=0.10)},
    "switch-egress-10%": {"egress": Impairment(loss=0.10)},
    "agent-1%": {"agent_loss": 0.01},
    "agent-10%": {"agent_loss": 0.10},
    "duplicates": {"ingress": Impairment(duplicate=0.2), "egress": Impairment(duplicate=0.2)},
    "reordering": {"ingress": Impairment(reorder=0.2), "egress": Impairment(reorder=0.2)},
    "everything": {
        "ingress": Impairment(loss=0.05, duplicate=0.1, reorder=0.1),
        "egress": Impairment(loss=0.05, duplicate=0.1, reorder=0.1),
        "agent_loss": 0.05,
    },
}


@pytest.fixture(scope="module")
def impaired_inputs() -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Three ranks, a float tensor, an int32 tensor and a small one; and their lossless results."""
    n = 3
    rng = np.random.default_rng(11)
    inputs = [
        [
            (rng.standard_normal(30000) * (r + 1)).astype(np.float32),
            rng.integers(-1000, 1000, size=5000, dtype=np.int32),
            rng.standard_normal(7).astype(np.float32),
        ]
        for r in range(n)
    ]
    with job(n) as (_, clients):
        lossless = allreduce_all(clients, inputs)
    return inputs, lossless


@pytest.mark.parametrize("name", list(IMPAIRMENTS))
def test_impaired_network_gives_bit_identical_results(
    name: str, impaired_inputs: tuple[list[list[np.ndarray]], list[list[np.ndarray]]]
) -> None:
    inputs, lossless = impaired_inputs
    options = dict(IMPAIRMENTS[name])
    agent_loss = options.pop("agent_loss", 0.0)
    switch = FakeSwitch(3, seed=hash(name) & 0xFFFF, **options)
    with job(3, switch, loss=agent_loss, loss_seed=7) as (_, clients):
        results = allreduce_all(clients, inputs)
        faults = sum(c.stats.dropped_on_purpose for c in clients) + sum(
            switch.counters[k] for k in ("loss", "duplicated", "reordered")
        )
        assert faults > 0, "the impairment did not happen: the test would prove nothing"
        if "%" in name or name == "everything":  # losses must have been repaired by retransmissions
            assert sum(c.stats.retransmissions for c in clients) > 0
        assert switch.counters["retransmission_differs"] == 0
    for r in range(3):
        for got, want in zip(results[r], lossless[r]):
            np.testing.assert_array_equal(got, want)


def test_window_of_one_slot() -> None:
    inputs = _floats(2, 3000, seed=4)
    with job(2, window=1) as (switch, clients):
        assert clients[0].window == 1
        results = allreduce_all(clients, [[x] for x in inputs])
    assert_close_to_reference(results[1][0], inputs, switch.lanes)
