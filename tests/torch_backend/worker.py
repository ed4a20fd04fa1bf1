"""One rank of a torch.distributed program over netagg, for test_torch_backend.py (run as a script).

    python worker.py SCENARIO OUT_JSON     (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, NETAGG_* set)

Scenarios: ``ddp`` (gradients of DDP over netagg vs the same gradients all-reduced by a gloo group, every step),
``collectives`` (the calls netagg delegates to gloo, and SUM/AVG/int32 through the switch), ``powersgd`` (torch's
PowerSGD comm hook), ``peer_dies`` (rank 1 exits in the middle; the others must raise, not hang). Two ranks whose
calls differ: ``mismatch_small`` (100 vs 200 elements) and ``mismatch_large`` (1000 vs 2000), each followed by a
matched all_reduce; ``int32_wide`` (2**30 + 5 and 1, against gloo); ``bad_input`` (the agent refuses rank 0's
tensor). Names, inputs and slots: ``names`` (group_name, functional collectives, destroying a subgroup),
``sparse_and_grad`` (sparse COO and requires_grad leaves, against gloo), ``exit_without_destroy`` and
``dies_silently`` (no destroy_process_group; the second skips interpreter exit too), ``many_groups`` (more groups
than the pool holds jobs), ``ddp_group_loop`` (50 DDP groups created and destroyed).
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
    # Every tensor the backend sends to the switch is one the agent takes (the others go to gloo), so rank 0's
    # agent is made to refuse this one: the refusal takes the agent's own path (an ABORT at its place).
    if rank == 0:
        refuse_once()
    first = _attempt(lambda: _summed(torch.ones(100)))
    after = _attempt(lambda: _summed(torch.ones(10)))
    return {"first": first, "after": after}


def refuse_once() -> None:
    """Make this process's agent refuse the next tensor it stages, as it refuses bad input."""
    from netagg.host_agent import client
    from netagg.host_agent.errors import AgentInputError

    original = client.stage

    def refusing(*args: Any, **kwargs: Any) -> Any:
        client.stage = original
        raise AgentInputError("refused by the test: this rank's tensor is unusable")

    client.stage = refusing


def _controller() -> Any:
    from netagg.controller.client import ControllerClient

    return ControllerClient(os.environ["NETAGG_CONTROLLER"])


def _jobs() -> list[str]:
    return [j["job"] for j in _controller().jobs()["jobs"]]


def names(rank: int, world: int) -> dict:
    import torch.distributed._functional_collectives as fc

    out: dict = {"world_name": dist.group.WORLD.group_name}
    sub = dist.new_group()
    out["sub_name"] = sub.group_name
    summed = fc.wait_tensor(fc.all_reduce(torch.full((300,), rank + 1.0), "sum", dist.group.WORLD))
    out["functional"] = summed[:2].tolist()
    out["functional_sub"] = fc.wait_tensor(fc.all_reduce(torch.full((5,), 2.0), "avg", sub)).tolist()
    out["sub_results"] = sub.results_received
    job = sub.job
    out["held_before"] = job in _jobs()
    dist.destroy_process_group(sub)
    dist.barrier()  # every rank destroyed it
    out["held_after"] = job in _jobs()
    return out


def sparse_and_grad(rank: int, world: int) -> dict:
    gloo = dist.new_group(backend="gloo")

    def sparse() -> torch.Tensor:
        return torch.sparse_coo_tensor(torch.tensor([[rank, 4]]), torch.tensor([rank + 1.0, 2.0]), (6,))

    out: dict = {}
    ours, theirs = sparse(), sparse()
    work = dist.all_reduce(ours, async_op=True)
    work.wait()
    dist.all_reduce(theirs, group=gloo)
    out["sparse"] = [ours.to_dense().tolist(), theirs.to_dense().tolist()]
    before = dist.group.WORLD.results_received
    for dtype in (torch.float32, torch.bfloat16):
        leaf, twin = (torch.full((50,), rank + 0.5, dtype=dtype, requires_grad=True) for _ in range(2))
        dist.all_reduce(leaf)
        dist.all_reduce(twin, group=gloo)
        out[f"grad_{dtype}"] = [leaf[:2].tolist(), twin[:2].tolist(), leaf.requires_grad, leaf.is_leaf]
    out["grad_results"] = dist.group.WORLD.results_received - before
    return out


def exit_without_destroy(rank: int, world: int) -> dict:
    sub = dist.new_group()
    dist.all_reduce(torch.ones(100))
    dist.all_reduce(torch.ones(100), group=sub)
    return {"jobs": [dist.group.WORLD.job, sub.job]}


def dies_silently(rank: int, world: int) -> dict:
    dist.all_reduce(torch.ones(100))
    return {"job": dist.group.WORLD.job}  # main exits without leaving, as a killed process does


def many_groups(rank: int, world: int) -> dict:
    """More groups than the pool holds jobs; they take turns at the slots (idle release, joins that wait)."""
    idle = [dist.new_group() for _ in range(10)]  # never all-reduce through the switch: no job
    for g in idle:
        dist.barrier(group=g)
    out: dict = {"idle_held": sum(g.holds_job for g in idle), "sums": [], "held": []}
    groups = [dist.new_group() for _ in range(8)]
    start = time.monotonic()
    for g in groups:
        t = torch.full((1000,), rank + 1.0)
        dist.all_reduce(t, group=g)
        out["sums"].append(t[0].item())
        out["held"].append(len(_jobs()))
    again = torch.full((10,), 1.0)
    dist.all_reduce(again, group=groups[0])  # given back by now: joins again
    out["again"] = again[0].item()
    out["generation"] = groups[0].job
    out["seconds"] = time.monotonic() - start
    return out


def ddp_group_loop(rank: int, world: int) -> dict:
    start = time.monotonic()
    for step in range(50):
        group = dist.new_group()
        net = torch.nn.parallel.DistributedDataParallel(model(), process_group=group)
        torch.manual_seed(step * world + rank)
        net(torch.randn(4, 32)).sum().backward()
        dist.destroy_process_group(group)
    out = {"seconds": time.monotonic() - start}
    dist.barrier()
    out["pool"] = _controller().jobs()["pool"]
    out["jobs"] = _jobs()
    return out


def main() -> int:
    scenario, out_path = sys.argv[1], sys.argv[2]
    dist.init_process_group("netagg")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = globals()[scenario](rank, world)
    pg = dist.group.WORLD
    # How much went through the switch (not through the internal gloo group).
    result["results_received"] = getattr(pg, "results_received", None)
    with open(out_path, "w") as f:
        json.dump(result, f)
    if scenario in ("peer_dies", "dies_silently"):
        os._exit(0)  # no destroy_process_group, no interpreter exit: a process that is killed
    if scenario != "exit_without_destroy":
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
