"""All-reduces handed over already quantized on the tensor's device (``staging.Prescaled``), as the torch backend
does for tensors on a GPU.

The pre-lanes of a block are requantized with integer shifts when its shared exponent arrives, so a rank that
prescales sends exactly the lanes a rank that quantizes on the host sends: every rank gets the same bits, whether
it prescales, sends the tensor in row-aligned pieces under one descriptor, or neither, also through loss,
duplicates and reordering (and on both data paths: conftest.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from agent_harness import WAIT, assert_close_to_reference, job, run_ranks
from fake_agg_switch import FakeSwitch, Impairment

from netagg.host_agent import quantize as q
from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.collective import Collective
from netagg.host_agent.errors import AgentInputError, CollectiveMismatchError
from netagg.host_agent.staging import Prescaled, Target, split_int32

pytestmark = pytest.mark.loopback


class _Lanes(Target):
    """The summed lanes of one prescaled piece, dequantized (or joined) with the numpy reference."""

    def __init__(self, count: int, num_workers: int) -> None:
        super().__init__(None, False)
        self.count, self.n = count, num_workers

    def deliver(self, flat: np.ndarray) -> Any:  # int32 pieces: the agent joins the lane pairs
        return flat.copy()

    def deliver_lanes(self, sums: np.ndarray, shared_exps: np.ndarray, nonfinite: np.ndarray) -> Any:
        return q.dequantize_reference(sums, shared_exps, self.n, nonfinite).reshape(-1)[: self.count]


def _pieces(x: np.ndarray, lanes: int, n: int, piece_rows: int, *, part: bool) -> list[Prescaled]:
    """``x`` as prescaled pieces of ``piece_rows`` blocks (the last may be shorter), as a device would make them."""
    exact = x.dtype == np.int32
    if exact:
        blocks = split_int32(x, lanes)
        exps, nonfinite = np.zeros(len(blocks), np.int8), np.zeros(len(blocks), bool)
        per_row = lanes // 2
    else:
        blocks = np.zeros((-(-x.size // lanes), lanes), np.float32)
        blocks.reshape(-1)[: x.size] = x
        exps, nonfinite = q.block_exponents_reference(blocks)
        blocks = q.prescale_reference(blocks, exps, nonfinite, n)
        per_row = lanes
    out = []
    for r0 in range(0, len(blocks), piece_rows):
        r1 = min(r0 + piece_rows, len(blocks))
        count = min(x.size, r1 * per_row) - r0 * per_row
        out.append(Prescaled(blocks[r0:r1].copy(), exps[r0:r1].copy(), nonfinite[r0:r1].copy(), count,
                             str(x.dtype), _Lanes(count, n), exact=exact, part=part))  # fmt: skip
    return out


def _inputs(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(40 + rank)
    spread = (rng.standard_normal(9_000) * 10.0 ** rng.integers(-30, 30, 9_000)).astype(np.float32)
    spread[100] = np.nan if rank == 0 else 1.0  # a NaN block on one rank: NaN on every rank
    spread[5000] = np.inf if rank == 2 else 0.0
    ties = (rng.integers(-(2**20), 2**20, 3_000) / 2.0 ** rng.integers(0, 24, 3_000)).astype(np.float32)
    return [
        spread,
        ties,
        rng.standard_normal(1).astype(np.float32),
        rng.integers(-(2**31), 2**31 - 1, 1_500, dtype=np.int64).astype(np.int32),
    ]


def _run(n: int, switch: FakeSwitch, how: list[str]) -> list[list[np.ndarray]]:
    """Rank r sums every input ``how[r]``: "host" (the array), "whole" (one Prescaled) or "pieces" (several)."""

    def body(rank: int, client: AllReduceClient) -> list[np.ndarray]:
        lanes = client.session.lanes
        futures = []
        for seq, x in enumerate(_inputs(rank)):
            descriptor = Collective("all_reduce", seq, x.size, str(x.dtype))
            if how[rank] == "host":
                futures.append([client.allreduce_async(x.copy(), inplace=False, descriptor=descriptor)])
            else:
                rows = 5 if how[rank] == "pieces" else 1 << 30
                futures.append([client.allreduce_async(p, descriptor=descriptor)
                                for p in _pieces(x, lanes, n, rows, part=how[rank] == "pieces")])  # fmt: skip
        return [np.concatenate([f.result(WAIT) for f in fs]) for fs in futures]

    with job(n, switch, window=8) as (_, clients):
        return run_ranks(clients, body)


def _bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize("impaired", [False, True], ids=["lossless", "loss-dup-reorder"])
def test_prescaled_ranks_get_the_bits_of_host_quantizing_ranks(impaired: bool) -> None:
    fault = Impairment(loss=0.05, duplicate=0.05, reorder=0.1) if impaired else None
    switch = FakeSwitch(3, ingress=fault, egress=fault, seed=9) if impaired else FakeSwitch(3)
    got = _run(3, switch, ["pieces", "host", "whole"])
    for k, x in enumerate(_inputs(0)):
        assert _bits(got[0][k]) == _bits(got[1][k]) == _bits(got[2][k]), f"input {k} differs between ranks"
        per_rank = [_inputs(r)[k] for r in range(3)]
        if x.dtype == np.int32:
            assert np.array_equal(got[0][k], np.sum(per_rank, axis=0, dtype=np.int64).astype(np.int32))
        elif k == 0:
            blocks = [100 // 256, 5000 // 256]
            assert all(np.isnan(got[0][k][b * 256 : (b + 1) * 256]).all() for b in blocks)
            finite = np.ones(x.size, bool)
            for b in blocks:
                finite[b * 256 : (b + 1) * 256] = False
            assert np.isfinite(got[0][k][finite]).all()
        else:
            assert_close_to_reference(got[0][k], per_rank, 256)


def test_a_piece_count_that_differs_from_the_other_ranks_fails_on_every_rank() -> None:
    """Pieces carry the whole all-reduce's descriptor: a rank whose tensor is longer fails at its first piece."""

    def body(rank: int, client: AllReduceClient) -> str:
        x = np.ones(1000 if rank == 0 else 2000, np.float32)
        descriptor = Collective("all_reduce", 0, x.size, "float32")
        futures = [client.allreduce_async(p, descriptor=descriptor)
                   for p in _pieces(x, client.session.lanes, 2, 2, part=True)]  # fmt: skip
        with pytest.raises(CollectiveMismatchError) as err:
            for f in futures:
                f.result(WAIT)
        return str(err.value)

    with job(2, FakeSwitch(2), window=4) as (_, clients):
        messages = run_ranks(clients, body)
    assert all("1000" in m or "2000" in m for m in messages), messages


def test_malformed_prescaled_input_is_refused() -> None:
    with job(2, FakeSwitch(2), window=4) as (_, clients):
        client = clients[0]
        lanes = client.session.lanes
        good = _pieces(np.ones(lanes + 1, np.float32), lanes, 2, 8, part=False)[0]
        for bad, why in (
            (Prescaled(good.lanes.astype(np.int64), good.exps, good.nonfinite, good.count, "float32", good.target),
             "int32 array of shape"),
            (Prescaled(good.lanes[:1].copy(), good.exps, good.nonfinite, good.count, "float32", good.target),
             "int32 array of shape"),
            (Prescaled(good.lanes, good.exps[:1], good.nonfinite, good.count, "float32", good.target),
             "need 2 exponents"),
        ):  # fmt: skip
            with pytest.raises(AgentInputError, match=why):
                client.allreduce_async(bad)
