"""One rank of a torch.distributed program whose netagg group sums with BML (run as a script by test_bml_torch.py).

    python torch_bml_worker.py OUT_PREFIX BROKEN_PLAN   (RANK, WORLD_SIZE, MASTER_*, NETAGG_ALGORITHM=bml and
                                                        NETAGG_BML_PLAN set)

The default group sums int32, float32 with and without non-finite values, AVG, float16/bfloat16, async (and a MAX
and a float64 sum that gloo serves) and trains a DDP model a few steps; then a second group uses BROKEN_PLAN, which
gives one rank a card address that is on no interface. Writes OUT_PREFIX.json (what happened) and OUT_PREFIX.npz
(every sum).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from netagg.host_agent.torch_backend import NetaggOptions  # (registers "netagg")

#: Elements of the float32 and int32 tensors: not a multiple of the 256-lane block, so the last block is partial.
COUNT = 10_007
#: float32 tensor in which one rank has a NaN and another an inf, each in its own block (256 lanes per block).
SPECIAL_COUNT = 1000
NAN_AT, NAN_RANK = 300, 2  # block 1
INF_AT, INF_RANK = 900, 3  # block 3


def int32_input(rank: int) -> np.ndarray:
    """Uniform over all int32 values: the sum wraps, as gloo's does."""
    rng = np.random.default_rng([7, rank])
    return rng.integers(-(2**31), 2**31, size=COUNT, dtype=np.int64).astype(np.int32)


def float32_input(rank: int) -> np.ndarray:
    """Normal values whose scale differs by block (1e-30 .. 1e30), so every block has its own shared exponent."""
    rng = np.random.default_rng([11, rank])
    scale = 10.0 ** rng.integers(-30, 31, size=-(-COUNT // 256)).repeat(256)[:COUNT]
    return (rng.standard_normal(COUNT) * scale).astype(np.float32)


def half_input(rank: int) -> np.ndarray:
    """Values float16 and bfloat16 hold (staged as float32, summed, cast back)."""
    return (np.random.default_rng([13, rank]).standard_normal(500) * 100).astype(np.float32)


def special_input(rank: int) -> np.ndarray:
    x = np.full(SPECIAL_COUNT, rank + 1.0, np.float32)
    if rank == NAN_RANK:
        x[NAN_AT] = np.nan
    if rank == INF_RANK:
        x[INF_AT] = np.inf
    return x


def sums(rank: int, world: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    t = torch.from_numpy(int32_input(rank).copy()).reshape(-1, 1)  # 2-D: reshaped, summed, written back
    dist.all_reduce(t)
    arrays["int32"] = t.reshape(-1).numpy()
    t = torch.from_numpy(float32_input(rank).copy())
    dist.all_reduce(t)
    arrays["float32"] = t.numpy()
    t = torch.from_numpy(special_input(rank).copy())
    dist.all_reduce(t)
    arrays["special"] = t.numpy()
    t = torch.full((300,), float(rank + 1))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    arrays["avg"] = t.numpy()
    t = torch.full((5,), 10 * rank + 3, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    arrays["avg_int32"] = t.numpy()
    for dtype in (torch.float16, torch.bfloat16):
        t = torch.from_numpy(half_input(rank)).to(dtype)
        dist.all_reduce(t)
        arrays[str(dtype)] = t.to(torch.float32).numpy()
    leaf = torch.full((50,), rank + 0.5, requires_grad=True)  # summed in place, as gloo does
    dist.all_reduce(leaf)
    arrays["leaf"] = leaf.detach().numpy()
    work = dist.all_reduce(torch.ones(700), async_op=True)
    arrays["async"] = work.get_future().wait()[0].numpy()
    # Served by gloo, as without BML.
    m = torch.tensor([float(rank)])
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    arrays["max"] = m.numpy()
    d = torch.full((3,), rank + 0.25, dtype=torch.float64)
    dist.all_reduce(d)
    arrays["float64"] = d.numpy()
    arrays["ddp"] = ddp_parameters(rank)
    pg = dist.group.WORLD
    peers = pg._bml._peers  # the group's BML transport: which addresses the sums travelled between
    report = {
        "bound": {str(level): sorted(addrs) for level, addrs in peers.card_addresses().items()},
        "switch_results": pg.results_received,
        "holds_job": pg.holds_job,
    }
    return report, arrays


def ddp_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))


def parameters(net: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()


def ddp_parameters(rank: int) -> np.ndarray:
    """A model's parameters after DDP steps on different data per rank (its gradients' sums are BML's)."""
    net = torch.nn.parallel.DistributedDataParallel(ddp_model())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(3):
        torch.manual_seed(100 + 4 * step + rank)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(torch.randn(16, 32)), torch.randn(16, 8)).backward()
        opt.step()
    return parameters(net)


def _attempt(fn: Any) -> dict[str, Any]:
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"error": type(exc).__name__, "message": str(exc), "after": time.monotonic() - start}
    return {"error": None, "after": time.monotonic() - start}


def card_missing(plan: str) -> dict[str, Any]:
    """A group whose plan gives one rank a card that is not on this machine: its first all_reduce, then one more."""
    group = dist.new_group(backend="netagg", pg_options=NetaggOptions(bml_plan=plan))
    first = _attempt(lambda: dist.all_reduce(torch.ones(100), group=group))
    after = _attempt(lambda: dist.all_reduce(torch.ones(10), group=group))
    dist.destroy_process_group(group)
    return {"first": first, "after": after}


def main() -> int:
    out, broken_plan = sys.argv[1], sys.argv[2]
    dist.init_process_group("netagg")
    rank, world = dist.get_rank(), dist.get_world_size()
    report, arrays = sums(rank, world)
    report["card_missing"] = card_missing(broken_plan)
    np.savez(f"{out}.npz", **arrays)
    with open(f"{out}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
