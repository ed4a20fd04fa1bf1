"""One rank of a DDP run with torch's PowerSGD hook (run by test_powersgd.py).

    python powersgd_worker.py BACKEND OUT.json     (torchrun's env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)

Every all_reduce the hook issues (plain all-reduces before ``start_powerSGD_iter``, then the uncompressed tensors,
the P and the Q factors) is recorded: its input, and its result as the hook receives it. After each step the exact
sum of the recorded inputs is taken in float64 over a separate gloo group, and the report holds, per all_reduce,
how far the result lies beyond the quantizer's bound (docs/quantization.md), plus the per-step losses, the final
parameters, the hook's compression statistics and the switch RESULTs this rank received.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

STEPS = 12
START = 3
RANK = 2

_all_reduce = dist.all_reduce
_records: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
_lock = threading.Lock()


def recording_all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """dist.all_reduce as the hook calls it, keeping a copy of the input and of the result before the hook changes
    it in place: it waits for the sum (the hook waits for its P and Q sums right away anyway)."""
    sent = tensor.detach().clone()
    work = _all_reduce(tensor, *args, **kwargs)
    work.wait()
    with _lock:
        _records.append((sent, [tensor.detach().clone()]))
    return work


def excess_over_bound(gloo: dist.ProcessGroup, world: int) -> list[float]:
    """For each recorded all_reduce: max over elements of |result - exact sum| - bound (<= 0 within the bound)."""
    out = []
    with _lock:
        records = list(_records)
        _records.clear()
    for sent, received in records:
        exact = sent.double()
        _all_reduce(exact, group=gloo)
        peak = sent.abs().max() if sent.numel() else torch.zeros(())
        _all_reduce(peak, op=dist.ReduceOp.MAX, group=gloo)
        # |sum - exact| <= n * 2**(E + k - 31) * (1 + 2**-24) + 2**-24 * |exact|, E <= the exponent of the peak.
        e = torch.frexp(peak).exponent.item()
        k = (world - 1).bit_length()
        bound = world * 2.0 ** (e + k - 31) * (1 + 2**-24) + 2**-24 * exact.abs()
        (result,) = received
        out.append(float(((result.double() - exact).abs() - bound).max()) if sent.numel() else 0.0)
    return out


def main() -> int:
    backend, out = sys.argv[1], sys.argv[2]
    if backend == "netagg":
        import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    gloo = dist.new_group(backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    ddp = DistributedDataParallel(model)
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=RANK, start_powerSGD_iter=START, orthogonalization_epsilon=1e-8
    )
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    dist.all_reduce = recording_all_reduce  # what the hook's module calls, as ``dist.all_reduce``
    results_before = getattr(dist.group.WORLD, "results_received", 0)
    target = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    report: dict = {"losses": [], "excess": [], "calls": []}
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 * step + rank)
        x = torch.randn(64, 32, generator=g)
        loss = torch.nn.functional.mse_loss(ddp(x), x @ target)
        opt.zero_grad()
        loss.backward()
        excess = excess_over_bound(gloo, world)
        report["calls"].append(len(excess))
        report["excess"].append(max(excess))
        opt.step()
        total = torch.tensor([loss.item()], dtype=torch.float64)
        _all_reduce(total, group=gloo)
        report["losses"].append(total.item() / world)
    dist.all_reduce = _all_reduce
    ratio, before, after = state.compression_stats()
    report.update(
        params=torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist(),
        ratio=ratio,
        numel_before=before,
        numel_after=after,
        switch_results=getattr(dist.group.WORLD, "results_received", 0) - results_before,
    )
    with open(out, "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
