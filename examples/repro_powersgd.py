"""Reproduce the shape of PowerSGD's results (Vogels, Karimireddy, Jaggi, NeurIPS 2019) with torch's own hook.

    python -m examples.repro_powersgd --out docs/repro                  # full run, through a software switch
    python -m examples.repro_powersgd --quick --out /some/folder        # a CI-sized look
    python -m examples.repro_powersgd --backend gloo --out /some/folder # the same over gloo

Four worker processes train one model with DistributedDataParallel and torch's
``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook`` (nothing re-implemented). With ``--backend netagg``
(the default) the script starts a software switch and a controller on loopback (``netagg.local.LocalStack``) and
every all-reduce the hook issues (the P and Q factors, and the tensors it leaves uncompressed) is summed by the
switch. Configurations, as in the paper's tables 1-3: plain all-reduce; rank 1, 2 and 4 with error feedback and warm
start; rank 2 without error feedback; rank 2 without warm start. Reported: test accuracy (mean and spread over
seeds), float32 bytes each worker sends per step once compression has started, and the compression ratio (torch's
own count, ``PowerSGDState.compression_stats``).

Settings: SGD with momentum 0.9 and learning rate 0.05, batch 16 per worker; ``start_powerSGD_iter`` 10 (plain
all-reduce for the first 10 steps: error feedback and warm start need a start above 1), orthogonalization epsilon
1e-8, ``min_compression_rate`` 2 (torch's default: a matrix is compressed only if that halves it at least, so the
biases always travel uncompressed).

Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the package, nothing
downloaded), split 75/25, each worker a quarter of the training set. A stand-in for the paper's CIFAR-10: image
classification with dense layers whose gradients are close to low rank, which is what PowerSGD exploits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from examples.digits import load
from netagg.local import LocalStack, free_port

WORKERS = 4
START_ITER = 10
EPSILON = 1e-8
LR = 0.05
BATCH = 16


@dataclass(frozen=True)
class Config:
    name: str
    rank: int | None  # None: plain all-reduce
    error_feedback: bool = True
    warm_start: bool = True


CONFIGS = (
    Config("all-reduce", None),
    Config("rank 1", 1),
    Config("rank 2", 2),
    Config("rank 4", 4),
    Config("rank 2, no error feedback", 2, error_feedback=False),
    Config("rank 2, no warm start", 2, warm_start=False),
)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )


def make_state(config: Config, group: dist.ProcessGroup | None = None) -> powerSGD_hook.PowerSGDState:
    return powerSGD_hook.PowerSGDState(
        process_group=group,
        matrix_approximation_rank=config.rank,
        start_powerSGD_iter=START_ITER,
        use_error_feedback=config.error_feedback,
        warm_start=config.warm_start,
        orthogonalization_epsilon=EPSILON,
    )


def train(config: Config, seed: int, epochs: int) -> dict:
    """One configuration on this rank of the default group; returns what rank 0 reports."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x_tr, y_tr, x_te, y_te = load()
    model = make_model(seed)
    ddp = DistributedDataParallel(model)
    state = None
    if config.rank is not None:
        state = make_state(config)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    shard = np.array_split(np.random.default_rng(seed).permutation(len(y_tr)), world)[rank]
    steps = len(shard) // BATCH
    switch = getattr(dist.group.WORLD, "results_received", None)
    results_before = switch
    start = time.monotonic()
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([seed, epoch, rank]).permutation(shard))
        for k in range(steps):
            idx = order[k * BATCH : (k + 1) * BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    seconds = time.monotonic() - start
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).float().mean())
    numel = sum(p.numel() for p in model.parameters())
    if state is None:
        ratio, elements = 1.0, float(numel)
    else:
        ratio, before, after = state.compression_stats()
        elements = after / (before / numel)  # torch counts every parameter once per compressed step
    out = {"accuracy": acc, "bytes_per_step": 4 * elements, "ratio": ratio, "steps": epochs * steps}
    out["seconds"] = seconds
    if switch is not None:
        out["switch_results"] = dist.group.WORLD.results_received - results_before
    return out


def rank_main(rank: int, world: int, backend: str, master: int, plan: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master))
    torch.set_num_threads(1)
    if backend == "netagg":
        import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")
    dist.init_process_group(backend, rank=rank, world_size=world)
    results: dict[str, list[dict]] = {}
    for config in CONFIGS:
        results[config.name] = [train(config, seed, plan["epochs"]) for seed in plan["seeds"]]
        if rank == 0:
            acc = np.mean([r["accuracy"] for r in results[config.name]])
            print(f"  {config.name}: {100 * acc:.2f} %", flush=True)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


@contextmanager
def backend_env(backend: str, folder: Path) -> Iterator[None]:
    """For netagg: a software switch and controller on loopback, exported to the worker processes."""
    if backend != "netagg":
        yield
        return
    with LocalStack(folder / "stack").start() as stack:
        saved = {k: os.environ.get(k) for k in stack.env}
        os.environ.update(stack.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run_workers(backend: str, plan: dict) -> dict[str, list[dict]]:
    with tempfile.TemporaryDirectory(prefix="repro-powersgd-") as tmp, backend_env(backend, Path(tmp)):
        out = Path(tmp) / "results.json"
        args = (WORKERS, backend, free_port(), plan, str(out))
        mp.start_processes(rank_main, args=args, nprocs=WORKERS, join=True, start_method="spawn")
        return json.loads(out.read_text())


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [100 * np.mean([r["accuracy"] for r in results[n]]) for n in names]
    spread = [100 * np.std([r["accuracy"] for r in results[n]]) for n in names]
    ratios = [np.mean([r["ratio"] for r in results[n]]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = ["grey"] + ["C0"] * 3 + ["C3", "C1"]
    ax.bar(range(len(names)), means, yerr=spread, capsize=4, color=colors[: len(names)])
    labels = [f"{n.replace(', ', chr(10))}\n({q:.0f}x)" for n, q in zip(names, ratios, strict=True)]
    ax.set_xticks(range(len(names)), labels, fontsize=7)
    ax.set_ylim(max(0.0, min(means) - 10), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"PowerSGD, {WORKERS} workers on digits: accuracy (compression ratio)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, args: argparse.Namespace, plan: dict, results: dict, seconds: float) -> None:
    lines = [
        "# PowerSGD reproduction",
        "",
        f"Generated by `python -m examples.repro_powersgd{' --quick' if args.quick else ''} --backend {args.backend} "
        f"--out {args.out}` in {seconds:.0f} s ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at "
        "the end).",
        f"{WORKERS} workers, backend {args.backend}"
        + (" (every all-reduce summed by a software switch)" if args.backend == "netagg" else "")
        + f"; scikit-learn's digits; MLP 64-256-128-10; {plan['epochs']} epochs; seeds {plan['seeds']}; "
        "see the module docstring of examples/repro_powersgd.py for the settings.",
        "",
        "| configuration | accuracy % (mean) | std | bytes per step per worker | compression ratio |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        acc = [100 * r["accuracy"] for r in runs]
        lines.append(
            f"| {name} | {np.mean(acc):.2f} | {np.std(acc):.2f} | {np.mean([r['bytes_per_step'] for r in runs]):.0f}"
            f" | {np.mean([r['ratio'] for r in runs]):.1f} |"
        )
    lines += ["", "![accuracy](powersgd_accuracy.png)", ""]
    (out / "powersgd.md").write_text("\n".join(lines))
    (out / "powersgd.json").write_text(json.dumps({"plan": plan, "configs": [asdict(c) for c in CONFIGS],
                                                   "results": results}, indent=1))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for powersgd.md, powersgd.json and the plot")
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) for CI")
    parser.add_argument("--backend", choices=("netagg", "gloo"), default="netagg", help="torch.distributed backend")
    args = parser.parse_args(argv)
    plan = {"epochs": 2, "seeds": [0]} if args.quick else {"epochs": 30, "seeds": [0, 1]}
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = run_workers(args.backend, plan)
    plot(results, args.out / "powersgd_accuracy.png")
    write_report(args.out, args, plan, results, time.monotonic() - start)
    print(f"[{time.monotonic() - start:6.1f} s] wrote {args.out / 'powersgd.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
