"""One rank of a CSER-family run driven by ``distributed_step`` (run by test_cser_distributed.py).

    python cser_worker.py BACKEND OUT.json     (torchrun's env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)

For each method of ``METHODS`` every rank trains the same small model on its own data for ``STEPS`` steps, one
all_reduce per phase. The report holds, per step, ``x_i + r_i``, the blocks each phase chose and, after a model
phase, ``x_i`` and ``r_i`` on the model phase's blocks; and the final ``x_i``. Rank 0 also runs the whole world in
one process with ``simulate_step`` on the same data (every rank's batches are a function of rank and step) and
reports every simulated worker's final ``x_i``: the distributed driver and the simulator must agree.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from netagg.host_agent.compression import cser as C

STEPS = 9
METHODS = {
    "CSER": lambda: C.cser(ratio=8, period=3),
    "CSER-PL": lambda: C.cser_pl(ratio=6, period=3),
    "QSparse-local-SGD": lambda: C.qsparse_local_sgd(ratio=6, period=3),
    "EF-SGD": lambda: C.ef_sgd(ratio=4),
    "local SGD": lambda: C.local_sgd(ratio=3),
}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.Tanh(), torch.nn.Linear(24, 3))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def backward(model: torch.nn.Module, rank: int, step: int) -> None:
    x, y = batch(rank, step)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()


def flat(tensors: list[torch.Tensor]) -> list[float]:
    return torch.cat([t.reshape(-1) for t in tensors]).tolist()


def distributed(method: C.Method, rank: int) -> dict:
    model = make_model()
    worker = C.CSERWorker(list(model.parameters()), method, lr=0.1, seed=5)
    steps = []
    for step in range(STEPS):
        backward(model, rank, step)
        phases = worker.local_step()
        record: dict = {"blocks": {ph.name: [[b.start, b.length] for b in worker.blocks(ph)] for ph in phases}}
        C.distributed_step(worker, phases)
        record["sum"] = flat([x + r for x, r in zip(worker.x, worker.r, strict=True)])
        if C.Phase.MODEL in phases:
            blocks = worker.blocks(C.Phase.MODEL)
            on_block = [(t.view(-1)[s], u.view(-1)[s]) for t, u, b in zip(worker.x, worker.r, blocks, strict=True)
                        for s in b.slices()]  # fmt: skip
            record["x_on_block"] = torch.cat([a for a, _ in on_block]).tolist()
            record["r_on_block"] = torch.cat([b for _, b in on_block]).tolist()
        steps.append(record)
    averaged = C.distributed_averaged_model(worker)
    return {"steps": steps, "x": flat(worker.x), "averaged": flat(averaged), "ratio": worker.compression_ratio}


def simulated(method: C.Method, world: int) -> dict:
    models = [make_model() for _ in range(world)]
    workers = [C.CSERWorker(list(m.parameters()), method, lr=0.1, seed=5) for m in models]
    for step in range(STEPS):
        for rank, model in enumerate(models):
            backward(model, rank, step)
        phases = [w.local_step() for w in workers][0]
        C.simulate_step(workers, phases)
    return {"x": [flat(w.x) for w in workers], "averaged": flat(C.averaged_model(workers))}


def main() -> int:
    backend, out = sys.argv[1], sys.argv[2]
    if backend == "netagg":
        import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    report: dict = {"methods": {name: distributed(make(), rank) for name, make in METHODS.items()}}
    if rank == 0:
        report["simulated"] = {name: simulated(make(), world) for name, make in METHODS.items()}
    report["switch_results"] = getattr(dist.group.WORLD, "results_received", None)
    with open(out, "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
