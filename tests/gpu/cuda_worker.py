"""One rank of test_cuda_backend.py (run as a script): CUDA tensors through netagg, against gloo and NCCL.

    python cuda_worker.py OUT_JSON     (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, NETAGG_* set)

WORKER_DEVICE=cpu runs the same script on CPU tensors with the world group's device path forced on
(``device_path="always"``), so the script itself is checked on machines without a GPU; WORKER_TIMING_MIB sets
the size of the timed all_reduce (default 64).

The world group is netagg with its default device path (quantized on the GPU, streamed in pieces); a second
netagg group takes the host path (one pinned copy, quantized by the agent), a third group is gloo, a fourth NCCL
where there is a GPU per rank. Every switch dtype, SUM and AVG, a NaN block, then DDP for a few steps and a timing
of one 64 MiB all_reduce per path. The report is JSON; the test asserts on it and prints it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from netagg.host_agent.torch_backend import NetaggOptions  # registers "netagg"


def bound(local_peak: torch.Tensor, total: torch.Tensor, world: int, gloo: dist.ProcessGroup) -> torch.Tensor:
    """The quantizer's bound for a sum of ``world`` ranks' values (docs/quantization.md) plus the float32 rounding
    of the two sums compared."""
    peak = local_peak.clone().float()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=gloo)
    e = torch.frexp(peak).exponent.item()
    quantizer = world * 2.0 ** (e + (world - 1).bit_length() - 31)
    return quantizer + world * (world - 1) * 2**-24 * peak + 2**-23 * total.abs()


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()


def main() -> int:
    cuda = os.environ.get("WORKER_DEVICE", "cuda") == "cuda"
    dist.init_process_group("netagg", pg_options=None if cuda else NetaggOptions(device_path="always"))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    host_path = dist.new_group(backend="netagg", pg_options=NetaggOptions(device_path="host"))
    gloo = dist.new_group(backend="gloo")
    nccl = dist.new_group(backend="nccl") if cuda and torch.cuda.device_count() >= world else None
    gpus = torch.cuda.device_count() if cuda else 0
    out: dict = {"world": world, "device": device.type, "gpus": gpus, "nccl": nccl is not None, "cases": {}}

    g = torch.Generator().manual_seed(rank)
    nan_block = torch.randn(3000, generator=g)
    nan_block[5] = float("nan") if rank == 0 else 1.0
    cases = {
        "float32": (torch.randn(300_001, generator=g) * 10.0 ** torch.randint(-20, 20, (300_001,), generator=g), "sum"),
        "float16": (torch.randn(5000, generator=g).half(), "sum"),
        "bfloat16": (torch.randn(5000, generator=g).bfloat16(), "avg"),
        "int32": (torch.randint(-(2**31), 2**31 - 1, (7000,), generator=g, dtype=torch.int64).int(), "sum"),
        "int32_avg": (torch.randint(-1000, 1000, (7000,), generator=g, dtype=torch.int32), "avg"),
        "nan_block": (nan_block, "sum"),
    }
    for name, (x, how) in cases.items():
        op = dist.ReduceOp.AVG if how == "avg" else dist.ReduceOp.SUM
        on_gpu, via_host, ref = (x.to(device, copy=True) for _ in range(3))
        dist.all_reduce(on_gpu, op=op)
        dist.all_reduce(via_host, op=op, group=host_path)
        if how == "avg" and not x.is_floating_point():
            dist.all_reduce(ref, group=gloo)
            ref = torch.div(ref, world, rounding_mode="floor")  # as floor_divide_
        else:
            dist.all_reduce(ref, op=op, group=gloo)
        case = {"device": on_gpu.device.type, "same_bits_as_host_path": bits(on_gpu) == bits(via_host)}
        if x.is_floating_point():
            # A NaN makes its whole block NaN through the switch (docs/quantization.md); elsewhere the bound holds.
            finite = torch.isfinite(ref) & torch.isfinite(on_gpu)
            diff = (on_gpu.float() - ref.float()).abs()[finite]
            peak = x.float().abs().nan_to_num(0.0, 0.0).max()  # NaN blocks are compared by their NaNs only
            limit = bound(peak, ref.float(), world, gloo).expand_as(ref.float())[finite]
            if x.dtype != torch.float32:  # plus the rounding of the result to the narrower dtype, on both sides
                limit = limit + 2 * ref.float().abs()[finite] * torch.finfo(x.dtype).eps
            case["worst_excess_vs_gloo"] = (diff - limit.to(device)).max().item() if diff.numel() else 0.0
            case["nan_where_gloo_nan"] = bool(torch.isnan(on_gpu)[torch.isnan(ref)].all())
            case["nan_elements"] = int(torch.isnan(on_gpu).sum())
        else:
            case["equal_to_gloo"] = bool(torch.equal(on_gpu, ref))
        out["cases"][name] = case

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    worst, worst_nccl = float("-inf"), float("-inf")
    for step in range(4):
        torch.manual_seed(100 + step * world + rank)
        x, y = torch.randn(64, 256, device=device), torch.randint(0, 10, (64,), device=device)
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        local = [p.grad.clone() for p in model.parameters()]  # our averaged grads; recompute the local ones
        reference = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).to(device)
        reference.load_state_dict(model.state_dict())
        torch.nn.functional.cross_entropy(reference(x), y).backward()
        for ours, theirs in zip(local, reference.parameters()):
            summed = theirs.grad.clone()
            dist.all_reduce(summed, group=gloo)
            limit = bound(theirs.grad.abs().max(), summed, world, gloo) / world
            worst = max(worst, ((ours - summed / world).abs() - limit).max().item())
            if nccl is not None:
                by_nccl = theirs.grad.clone()
                dist.all_reduce(by_nccl, group=nccl)
                worst_nccl = max(worst_nccl, ((ours - by_nccl / world).abs() - limit).max().item())
        torch.optim.SGD(net.parameters(), lr=0.1).step()
    out["ddp"] = {"grad_device": model[0].weight.grad.device.type, "worst_excess_vs_gloo": worst,
                  "worst_excess_vs_nccl": worst_nccl if nccl is not None else None}  # fmt: skip

    mib = int(os.environ.get("WORKER_TIMING_MIB", "64"))
    big = torch.randn(mib << 18, device=device)  # float32
    timings = {}
    for name, group in (("netagg_device_path", None), ("netagg_host_path", host_path), ("gloo", gloo),
                        ("nccl", nccl)):  # fmt: skip
        if name == "nccl" and nccl is None:
            continue
        seconds = []
        for _ in range(3):
            t = big.clone()
            sync()
            dist.barrier(group=gloo)
            start = time.perf_counter()
            dist.all_reduce(t, group=group)
            sync()
            seconds.append(time.perf_counter() - start)
        timings[name] = {"median_s": statistics.median(seconds), "runs_s": seconds}
    out["timing"] = {"MiB": mib, **timings}
    out["results"] = dist.group.WORLD.results_received
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
