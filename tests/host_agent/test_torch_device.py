"""The torch backend's device path (host_agent/torch_device.py) on CPU tensors: ranks as threads, fake switch.

``device_path="always"`` sends host tensors the way tensors on a GPU go: quantized by torch ops on their device
(pre-lanes), streamed in pieces through a few host buffers, dequantized on the device. These tests check that
path on any machine: it gives the host path's bits (so ranks may mix the two), keeps the group's calls in call
order when host and device all-reduces interleave, reuses its buffers, and fails as the host path does.
tests/gpu/ runs it on CUDA tensors where a GPU is present.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from agent_harness import run_ranks

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
from torch_groups import FAST, groups, summed, timed  # noqa: E402

from netagg.host_agent.torch_backend import NetaggOptions, NetaggProcessGroup  # noqa: E402 - needs torch

#: Three blocks of 256 lanes per piece and 8 slots: the feeder keeps 2 * 8 blocks ahead (7 buffers), so the larger
#: tensors below are more pieces than it has buffers.
PIECE = 3 * 4 * 256
WINDOW = 8
DEVICE = {"device_path": "always", "device_piece": PIECE, "window": WINDOW}
HOST = {"device_path": "host", "window": WINDOW}


def _inputs(rank: int) -> list[tuple[torch.Tensor, Any]]:
    g = torch.Generator().manual_seed(10 + rank)
    spread = torch.randn(9_001, generator=g) * torch.pow(10.0, torch.randint(-30, 30, (9_001,), generator=g))
    spread[77] = float("nan") if rank == 0 else 1.0
    wide = torch.randint(-(2**31), 2**31 - 1, (4_000,), generator=g, dtype=torch.int64).to(torch.int32)
    return [
        (spread, dist.ReduceOp.SUM),
        (torch.randn(3_000, generator=g).to(torch.float16), dist.ReduceOp.SUM),
        (torch.randn(2_000, generator=g).to(torch.bfloat16), dist.ReduceOp.AVG),
        (wide, dist.ReduceOp.SUM),
        (torch.randint(-50, 50, (1_000,), generator=g, dtype=torch.int32), dist.ReduceOp.AVG),
        (torch.randn(40, 70, generator=g).t(), dist.ReduceOp.SUM),  # not contiguous
        (torch.randn(1, generator=g), dist.ReduceOp.AVG),
        (torch.zeros(0), dist.ReduceOp.SUM),
    ]


def _run(n: int, *per_rank: dict[str, Any]) -> list[list[torch.Tensor]]:
    """Every rank queues all of its inputs at once (async), then waits; the sums per rank."""

    def body(rank: int, pg: NetaggProcessGroup) -> list[torch.Tensor]:
        works, tensors = [], []
        for tensor, op in _inputs(rank):
            opts = dist.AllreduceOptions()
            opts.reduceOp = op
            works.append(pg.allreduce([tensor], opts))
            tensors.append(tensor)
        for work in works:
            work.wait()
        return tensors

    with groups(n, *per_rank) as (_, pgs, _store):
        sums = run_ranks(pgs, body)  # type: ignore[arg-type]
        for pg in pgs:
            if pg._feeder is not None:  # every buffer came back; few enough that pieces reused them
                assert len(pg._feeder._free) == pg._feeder.buffers == 7
        return sums


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def test_the_device_path_gives_the_host_paths_bits_and_ranks_may_mix_them() -> None:
    host = _run(2, HOST, HOST)
    device = _run(2, DEVICE, DEVICE)
    mixed = _run(2, DEVICE, HOST)
    for k in range(len(host[0])):
        expected = _bits(host[0][k])
        assert _bits(host[1][k]) == expected
        for rank in range(2):
            assert _bits(device[rank][k]) == expected, f"input {k}: device path differs on rank {rank}"
            assert _bits(mixed[rank][k]) == expected, f"input {k}: mixed paths differ on rank {rank}"
    spread = device[0][0]
    assert torch.isnan(spread[:256]).all() and torch.isfinite(spread[256:]).all()
    exact = (_inputs(0)[3][0].to(torch.int64) + _inputs(1)[3][0].to(torch.int64)).to(torch.int32)
    assert torch.equal(device[1][3], exact)  # int32 wraps as gloo's sum does


def test_host_and_device_all_reduces_keep_call_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 sends float32 through the device path and the rest from host memory; rank 1 sends everything from
    host memory. Host all-reduces called while device pieces still wait must queue behind them, or the ranks'
    streams would differ (a mismatch)."""
    original = NetaggProcessGroup._on_device

    def on_device(self: NetaggProcessGroup, tensor: torch.Tensor) -> bool:
        return tensor.dtype == torch.float32 and original(self, tensor)

    monkeypatch.setattr(NetaggProcessGroup, "_on_device", on_device)
    host = _run(2, HOST, HOST)
    interleaved = _run(2, DEVICE, HOST)
    for k in range(len(host[0])):
        for rank in range(2):
            assert _bits(interleaved[rank][k]) == _bits(host[0][k]), f"input {k} rank {rank}"


def test_different_numel_fails_on_every_rank_through_pieces() -> None:
    with groups(2, DEVICE, DEVICE) as (_, pgs, _store):
        counts = (5_000, 6_000)
        outcomes, elapsed = timed(pgs, lambda r, pg: summed(pg, torch.ones(counts[r])))
        assert elapsed < FAST, f"took {elapsed:.1f} s"
        for rank, out in enumerate(outcomes):
            assert isinstance(out, dist.DistBackendError), f"rank {rank}: {out!r}"
            assert "rank 0 has 5000 float32 elements, rank 1 has 6000 float32 elements" in str(out), out


def test_a_leaf_that_requires_grad_is_summed_in_place() -> None:
    with groups(2, DEVICE, DEVICE) as (_, pgs, _store):

        def body(rank: int, pg: NetaggProcessGroup) -> list[float]:
            leaf = torch.full((2_000,), float(rank + 1), requires_grad=True)
            summed(pg, leaf)
            return [leaf[0].item(), leaf[-1].item(), float(leaf.requires_grad)]

        assert run_ranks(pgs, body) == [[3.0, 3.0, 1.0]] * 2  # type: ignore[arg-type]


def test_destroying_the_group_fails_queued_device_all_reduces_without_hanging() -> None:
    """Rank 1 never calls: rank 0's pieces wait for it until the group is destroyed, and every work fails."""
    with groups(2, DEVICE, DEVICE) as (_, pgs, _store):
        works = [pgs[0].allreduce([torch.ones(20_000)]) for _ in range(3)]
        pgs[0].shutdown()
        for work in works:
            with pytest.raises(dist.DistBackendError):
                work.wait()


def test_a_device_failure_mid_tensor_fails_every_rank_fast_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's device fails on the third piece, after two went out: an ABORT in its place fails the all-reduce
    on rank 1 within a round trip (not at the deadline), quoting rank 0's error."""
    from netagg.host_agent import torch_device

    marker = 12345.0
    original = torch_device.tq.prescale

    def prescale(blocks: torch.Tensor, *args: Any) -> torch.Tensor:
        if blocks[0, 0].item() == marker:
            raise RuntimeError("the device failed (test)")
        return original(blocks, *args)

    monkeypatch.setattr(torch_device.tq, "prescale", prescale)

    def body(rank: int, pg: NetaggProcessGroup) -> Any:
        tensor = torch.ones(20 * 256)
        if rank == 0:
            tensor[2 * 3 * 256] = marker  # the first value of the third piece (3 blocks each)
        return summed(pg, tensor)

    with groups(2, DEVICE, DEVICE) as (_, pgs, _store):
        outcomes, elapsed = timed(pgs, body)
        assert elapsed < FAST, f"took {elapsed:.1f} s"
        for out in outcomes:
            assert isinstance(out, dist.DistBackendError) and "the device failed (test)" in str(out), out
        assert "rank 0 gave up on it: the device failed (test)" in str(outcomes[1]), outcomes[1]
        after, _ = timed(pgs, lambda r, pg: summed(pg, torch.ones(10)))
        assert all(isinstance(out, dist.DistBackendError) for out in after), after  # the group is unusable


def test_device_path_options_are_checked() -> None:
    with pytest.raises(ValueError, match="device path 'gpu'"):
        NetaggOptions(device_path="gpu").resolved()
    assert NetaggOptions().resolved().device_path == "auto"
    with pytest.raises(ValueError, match="device_piece 16 .* at least one block of 1024 bytes"):
        NetaggProcessGroup(dist.HashStore(), 0, 2, timedelta(seconds=5), NetaggOptions(device_piece=16, job="j"))
    assert NetaggOptions(device_piece=4096).resolved().device_piece == 4096
