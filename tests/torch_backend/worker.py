"""One rank of a torch.distributed program over netagg, for test_torch_backend.py (run as a script).

    python worker.py SCENARIO OUT_JSON     (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, NETAGG_* set)

Scenarios: ``ddp`` (gradients of DDP over netagg vs the same gradients all-reduced by a gloo group, every step),
``collectives`` (the calls netagg delegates to gloo, and SUM/AVG/int32 through the switch), ``powersgd`` (torch's
PowerSGD comm hook), ``peer_dies`` (rank 1 exits in the middle; the others must raise, not hang). Two ranks whose
calls differ: ``mismatch_small`` (100 vs 200 elements) and ``mismatch_large`` (1000 vs 2000), each followed by a
matched all_reduce; ``int32_wide`` (2**30 + 5 and 1, against gloo); ``bad_input`` (rank 0's tensor is refused).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))


def ddp(rank: int, world: int) -> dict:
    gloo = dist.new_group(backend="gloo")
    net = torch.nn.parallel.DistributedDataParallel(model())
    reference = model()
    worst = 0.0
    for step in range(5):
        torch.manual_seed(100 + step * world + rank)
        x, y = torch.randn(16, 32), torch.randn(16, 8)
        net.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        reference.load_state_dict(net.module.state_dict())
        reference.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        for ours, theirs in zip(net.module.parameters(), reference.parameters()):
            local = theirs.grad.clone()
            peak = local.abs().max()
            dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=gloo)
            dist.all_reduce(local, group=gloo)
            local /= world
            # The quantizer's bound for a sum (docs/quantization.md: world * 2**(E + k - 31), E <= the peak's
            # exponent), divided by world; plus the float32 rounding of the two results compared: gloo's sum of
            # `world` float32 values (<= (world - 1) * 2**-24 * world * peak, divided by world) and ours (2**-24).
            e = torch.frexp(peak).exponent.item()
            bound = (
                2.0 ** (e + (world - 1).bit_length() - 31)
                + (world - 1) * 2**-24 * peak
                + 2**-23 * local.abs()
            )
            excess = ((ours.grad - local).abs() - bound).max().item()
            worst = max(worst, excess)
        torch.optim.SGD(net.parameters(), lr=0.1).step()
    return {"worst_excess": worst}


def collectives(rank: int, world: int) -> dict:
    out: dict = {}
    t = torch.full((1000,), float(rank + 1))
    dist.all_reduce(t)
    out["sum"] = t[:3].tolist()
    t = torch.full((10,), float(rank + 1))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    out["avg"] = t[0].item()
    i = torch.full((70,), rank * 1000 + 7, dtype=torch.int32)
    dist.all_reduce(i)
    out["int32"] = i[0].item()
    h = torch.full((33,), 0.5 * (rank + 1), dtype=torch.bfloat16)
    dist.all_reduce(h)
    out["bf16"] = h[0].item()
    m = torch.tensor([float(rank)])
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    out["max"] = m.item()
    b = torch.tensor([rank * 10.0])
    dist.broadcast(b, src=world - 1)
    out["broadcast"] = b.item()
    gathered = [torch.zeros(2) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor([rank, rank + 0.5]))
    out["all_gather"] = [g.tolist() for g in gathered]
    objs: list = [None] * world
    dist.all_gather_object(objs, {"rank": rank})
    out["all_gather_object"] = objs
    rs = torch.zeros(1)
    dist.reduce_scatter_tensor(rs, torch.arange(world, dtype=torch.float32) + rank)
    out["reduce_scatter"] = rs.item()
    a2a = torch.empty(world)
    dist.all_to_all_single(a2a, torch.arange(world, dtype=torch.float32) + 10 * rank)
    out["all_to_all"] = a2a.tolist()
    dist.barrier()
    work = dist.all_reduce(torch.ones(5), async_op=True)
    out["async_value"] = work.get_future().wait()[0][0].item()
    return out


def powersgd(rank: int, world: int) -> dict:
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    torch.manual_seed(1)
    net = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    )
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=2
    )
    net.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(7 + rank)
    w = torch.randn(16, 1, generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(30):
        x = torch.randn(32, 16, generator=g)
        loss = torch.nn.functional.mse_loss(net(x), x @ w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"first": sum(losses[:5]) / 5, "last": sum(losses[-5:]) / 5}


def peer_dies(rank: int, world: int) -> dict:
    t = torch.ones(1000)
    dist.all_reduce(t)  # everyone is in
    if rank == 1:
        os._exit(0)  # a peer that dies without a word
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(100_000))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        import traceback

        return {
            "error": type(exc).__name__,
            "message": str(exc),
            "after": time.monotonic() - start,
            "where": traceback.format_exc()[-1500:],
        }
    return {"error": None}


def _attempt(fn: Callable[[], Any]) -> dict:
    """fn's value, or the error it raised, and how long it took."""
    start = time.monotonic()
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"error": type(exc).__name__, "message": str(exc), "after": time.monotonic() - start}
    return {"error": None, "value": value, "after": time.monotonic() - start}


def _summed(t: torch.Tensor) -> list:
    dist.all_reduce(t)
    return t[:3].tolist()


def _mismatch(rank: int, count: int) -> dict:
    first = _attempt(lambda: _summed(torch.full((count,), rank + 1.0)))
    after = _attempt(lambda: _summed(torch.ones(10)))  # matched: it must fail too, not return a wrong sum
    return {"first": first, "after": after}


def mismatch_small(rank: int, world: int) -> dict:
    return _mismatch(rank, 100 if rank == 0 else 200)


def mismatch_large(rank: int, world: int) -> dict:
    return _mismatch(rank, 1000 if rank == 0 else 2000)


def int32_wide(rank: int, world: int) -> dict:
    value = 2**30 + 5 if rank == 0 else 1  # the true sum fits int32; one rank's value alone is large
    ours = torch.tensor([value], dtype=torch.int32)
    dist.all_reduce(ours)
    gloo = dist.new_group(backend="gloo")
    theirs = torch.tensor([value], dtype=torch.int32)
    dist.all_reduce(theirs, group=gloo)
    after = torch.ones(1)
    dist.all_reduce(after)
    return {"netagg": ours.item(), "gloo": theirs.item(), "after": after.item()}


def bad_input(rank: int, world: int) -> dict:
    # The agent refuses an in-place all-reduce of a leaf that requires grad; only rank 0 passes one.
    first = _attempt(lambda: _summed(torch.ones(100, requires_grad=(rank == 0))))
    after = _attempt(lambda: _summed(torch.ones(10)))
    return {"first": first, "after": after}


def main() -> int:
    scenario, out_path = sys.argv[1], sys.argv[2]
    dist.init_process_group("netagg")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = globals()[scenario](rank, world)
    pg = dist.group.WORLD
    # How much went through the switch (not through the internal gloo group).
    result["results_received"] = pg.client.stats.results if hasattr(pg, "client") else None
    with open(out_path, "w") as f:
        json.dump(result, f)
    if scenario != "peer_dies":
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
