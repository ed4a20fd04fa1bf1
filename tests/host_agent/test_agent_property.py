"""Random streams of all-reduces (sizes, dtypes, batching, window, faults): every result matches its reference.

Ranks run unsynchronized, so whether a slot's next chunk is already queued when its previous round is packed
differs from rank to rank and run to run: exactly the case the EXP_UNKNOWN marker must make consistent.
"""

from __future__ import annotations

import numpy as np
import pytest
from agent_harness import WAIT, assert_close_to_reference, job, run_ranks
from fake_agg_switch import FakeSwitch, Impairment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netagg.host_agent.client import AllReduceClient

pytestmark = pytest.mark.loopback

LANES = 32  # small packets: many chunks per slot from small tensors

op_strategy = st.tuples(
    st.integers(min_value=0, max_value=700),  # elements
    st.sampled_from(["float32", "int32", "float16"]),
    st.integers(min_value=-20, max_value=20),  # binary order of magnitude of the values
)
stream_strategy = st.lists(st.lists(op_strategy, min_size=1, max_size=4), min_size=1, max_size=4)  # batches


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=stream_strategy,
    num_workers=st.sampled_from([1, 2, 3]),
    window=st.sampled_from([1, 2, 5, 8]),
    faulty=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_random_streams(
    stream: list[list[tuple[int, str, int]]], num_workers: int, window: int, faulty: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    inputs: list[list[list[np.ndarray]]] = []  # [batch][op][rank]
    for batch in stream:
        ops = []
        for count, dtype, order in batch:
            if dtype == "int32":
                ops.append(
                    [rng.integers(-1000, 1000, size=count, dtype=np.int32) for _ in range(num_workers)]
                )
            else:
                scale = 2.0 ** (order if dtype == "float32" else min(order, 10))
                ops.append([(rng.standard_normal(count) * scale).astype(dtype) for _ in range(num_workers)])
        inputs.append(ops)
    impairment = Impairment(loss=0.05, duplicate=0.05, reorder=0.05) if faulty else Impairment()
    switch = FakeSwitch(num_workers, lanes=LANES, ingress=impairment, egress=impairment, seed=seed)

    def body(rank: int, client: AllReduceClient) -> list[list[np.ndarray]]:
        out = []
        for ops in inputs:  # a batch is queued at once; the next one only after it completed
            futures = [client.allreduce_async(per_rank[rank], inplace=False) for per_rank in ops]
            out.append([f.result(WAIT) for f in futures])
        return out

    with job(num_workers, switch, window=window) as (_, clients):
        results = run_ranks(clients, body)
    for b, ops in enumerate(inputs):
        for o, per_rank in enumerate(ops):
            for r in range(num_workers):
                got = results[r][b][o]
                assert got.dtype == per_rank[0].dtype and got.shape == per_rank[0].shape
                if got.dtype == np.int32:
                    np.testing.assert_array_equal(got, np.sum(per_rank, axis=0, dtype=np.int32))
                elif got.dtype == np.float32:
                    assert_close_to_reference(got, per_rank, LANES)
                np.testing.assert_array_equal(got, results[0][b][o])  # identical bits on every rank
