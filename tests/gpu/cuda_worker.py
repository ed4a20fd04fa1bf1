"""One rank of test_cuda_backend.py (run as a script): all_reduce and DDP of CUDA tensors over netagg.

    python cuda_worker.py OUT_JSON     (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, NETAGG_* set)
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")


def main() -> int:
    dist.init_process_group("netagg")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    out: dict = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int32):
        t = torch.full((3000,), rank + 1, dtype=dtype, device=device)
        dist.all_reduce(t)
        out[str(dtype)] = [t.device.type, t[0].item(), t[-1].item()]
    avg = torch.full((10,), float(rank), device=device)
    dist.all_reduce(avg, op=dist.ReduceOp.AVG)
    out["avg"] = avg[0].item()
    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 8).to(device), device_ids=[device])
    net(torch.randn(16, 64, device=device)).sum().backward()
    out["ddp_grad_device"] = net.module.weight.grad.device.type
    out["results"] = dist.group.WORLD.results_received
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
