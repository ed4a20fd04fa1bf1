"""One rank of a DDP run whose gradients travel as quantizer codes (run by test_quantized_hook.py).

    python hook_worker.py SCHEME BACKEND OUT.json     (torchrun's env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)

Each rank feeds its own data; after backward, the hook leaves every rank the same gradient. The report holds each
parameter's gradient after the hook, the exact average of the ranks' gradients (all-reduced in float64 over a
separate gloo group) and the hook's traffic counters.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from netagg.host_agent.compression import quantizers as Q
from netagg.host_agent.compression.hooks import QuantizedState, quantized_allgather_hook

SCHEMES = {
    "NUQSGD": lambda: Q.nuqsgd(4, 256),
    "QSGDinf": lambda: Q.qsgdinf(4, 256),
    "ALQ": lambda: Q.alq(4, 256),
    "AMQ": lambda: Q.amq(4, 256),
    "TRN": lambda: Q.terngrad(256),
}


def main() -> int:
    scheme, backend, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if backend == "netagg":
        import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    exact_group = dist.new_group(backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.005)  # several buckets
    state = QuantizedState(SCHEMES[scheme](), seed=rank)
    ddp.register_comm_hook(state, quantized_allgather_hook)
    report: dict = {"steps": []}
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        ddp.zero_grad()
        x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        # The exact average, for comparison: each rank's own gradient, summed in float64.
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        own = [p.grad.detach().double().clone() for p in model.parameters()]
        for g in own:
            dist.all_reduce(g, group=exact_group)
        model.zero_grad()
        noise_before = state.noise_added
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        # The expected squared error of the average: every rank's closed-form noise, over world**2.
        noise = torch.tensor([state.noise_added - noise_before], dtype=torch.float64)
        dist.all_reduce(noise, group=exact_group)
        report["steps"].append(
            {
                "hooked": [p.grad.reshape(-1).tolist() for p in model.parameters()],
                "exact": [(g / world).reshape(-1).tolist() for g in own],
                "expected_sq_error": noise.item() / world**2,
            }
        )
    report.update(bytes_sent=state.bytes_sent, bytes_dense=state.bytes_dense, steps_counted=state.steps)
    with open(out, "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
