"""Reproduce the shape of the ALQ/AMQ paper's results (Faghri et al., NeurIPS 2020) on a small, shipped data set.

    python -m examples.repro_alq --out docs/repro            # full run (a few minutes on 2 cores)
    python -m examples.repro_alq --quick --out /some/folder  # a CI-sized look

Two experiments, both at 3 bits (TernGrad is ternary by design):

1. Normalized variance ``E||Q(g) - g||^2 / ||g||^2`` of every quantizer against bucket size (64 ... 16384), on real
   gradients: full-model minibatch gradients of an MLP taken at several points of its training. ALQ's and AMQ's
   levels are fitted on three other fresh minibatch gradients of the same point (the paper's procedure), then
   judged on gradients they did not see. The paper's Fig. 7a / Table 1: NUQSGD and QSGDinf get worse as buckets
   grow, ALQ and AMQ stay low.
2. Test accuracy of data-parallel SGD with 4 workers, each quantizing its own minibatch gradient with its own random
   stream (ALQ/AMQ refitting their levels on the schedule of ``LevelSchedule`` from their last gradients), the
   decoded gradients averaged: exactly what ``quantized_allgather_hook`` does, computed in one process so the run
   measures the quantizers and not the machine. Expected: ALQ and AMQ close to full precision.

Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the package, nothing
downloaded). A stand-in for the paper's CIFAR/ImageNet: still image classification whose gradients have the
heavy-tailed, layer-dependent magnitudes that make bucket size matter, small enough to train in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from netagg.host_agent.compression import adaptive as A
from netagg.host_agent.compression import quantizers as Q

BITS = 3
SCHEMES = ("NUQSGD", "QSGDinf", "TRN", "ALQ", "AMQ")


def make_quantizer(name: str, bucket: int) -> Q.StochasticQuantizer:
    return {
        "NUQSGD": lambda: Q.nuqsgd(BITS, bucket),
        "QSGDinf": lambda: Q.qsgdinf(BITS, bucket),
        "TRN": lambda: Q.terngrad(bucket),
        "ALQ": lambda: Q.alq(BITS, bucket),
        "AMQ": lambda: Q.amq(BITS, bucket),
    }[name]()


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load(seed: int) -> Data:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return Data(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te))


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )


def flat_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy()


def apply(model: torch.nn.Module, gradient: np.ndarray) -> None:
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = torch.from_numpy(gradient[offset : offset + n].reshape(p.shape).astype(np.float32))
        offset += n


def accuracy(model: torch.nn.Module, data: Data) -> float:
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean())


# --- experiment 1: variance against bucket size ------------------------------------------------------------


def variance_experiment(data: Data, buckets: list[int], points: list[int], seed: int, batch: int) -> dict:
    """{scheme: {bucket: mean normalized variance}} over gradients taken after each number of epochs in ``points``."""
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(seed)
    n = len(data.y_train)

    def minibatch() -> np.ndarray:
        idx = torch.from_numpy(rng.choice(n, batch, replace=False))
        return flat_gradient(model, data.x_train[idx], data.y_train[idx])

    results: dict[str, dict[int, list[float]]] = {s: {b: [] for b in buckets} for s in SCHEMES}
    epoch = 0
    for point in points:
        while epoch < point:  # train on, plain SGD, to the next point
            for idx in torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).split(batch):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
                opt.step()
            epoch += 1
        fit = [minibatch() for _ in range(3)]
        judge = [minibatch() for _ in range(4)]
        for b in buckets:
            for s in SCHEMES:
                q = A.refit(make_quantizer(s, b), fit)
                results[s][b].extend(q.normalized_variance(g) for g in judge)
    return {s: {b: float(np.mean(v)) for b, v in per.items()} for s, per in results.items()}


# --- experiment 2: accuracy of 4 quantizing workers ---------------------------------------------------------


def train(data: Data, scheme: str | None, workers: int, epochs: int, bucket: int, seed: int, batch: int) -> float:
    """Test accuracy after data-parallel training; ``scheme`` None is full-precision SGD."""
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rngs = [np.random.default_rng([seed, w]) for w in range(workers)]
    quantizers = [make_quantizer(scheme, bucket) for _ in range(workers)] if scheme else []
    recent: list[deque[np.ndarray]] = [deque(maxlen=3) for _ in range(workers)]
    schedule = A.LevelSchedule()
    shards = np.array_split(np.random.default_rng(seed).permutation(len(data.y_train)), workers)
    steps = min(len(s) for s in shards) // batch
    step = 0
    for epoch in range(epochs):
        order = [np.random.default_rng([seed, epoch, w]).permutation(shard) for w, shard in enumerate(shards)]
        for k in range(steps):
            total = None
            for w in range(workers):
                idx = torch.from_numpy(order[w][k * batch : (k + 1) * batch])
                g = flat_gradient(model, data.x_train[idx], data.y_train[idx])
                if scheme:
                    recent[w].append(g)
                    if schedule.due(step):
                        quantizers[w] = A.refit(quantizers[w], recent[w])
                    payload, ctx = quantizers[w].compress(g, rngs[w])
                    g = quantizers[w].decompress(payload, ctx)
                total = g.astype(np.float64) if total is None else total + g
            apply(model, (total / workers).astype(np.float32))
            opt.step()
            step += 1
    return accuracy(model, data)


# --- report -------------------------------------------------------------------------------------------------


def plot_variance(variance: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s, per in variance.items():
        xs = sorted(per)
        ax.plot(xs, [per[b] for b in xs], marker="o", label=s)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bucket size")
    ax.set_ylabel("normalized variance E||Q(g)-g||² / ||g||²")
    ax.set_title(f"{BITS}-bit quantizers on MLP gradients (digits)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(acc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(acc)
    means = [100 * np.mean(acc[n]) for n in names]
    spread = [100 * np.std(acc[n]) for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, means, yerr=spread, capsize=4, color=["grey"] + ["C0"] * (len(names) - 1))
    ax.set_ylim(max(0.0, min(means) - 10), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"4 workers, {BITS} bits: accuracy (mean, std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, args: argparse.Namespace, variance: dict, acc: dict, seconds: float) -> None:
    buckets = sorted(next(iter(variance.values())))
    lines = [
        "# ALQ / AMQ reproduction",
        "",
        f"Generated by `python -m examples.repro_alq{' --quick' if args.quick else ''} --out {args.out}` "
        f"in {seconds:.0f} s ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end).",
        "Data: scikit-learn's digits; model: MLP 64-256-128-10; see the module docstring of examples/repro_alq.py.",
        "",
        f"## Normalized variance at {BITS} bits against bucket size",
        "",
        "| scheme | " + " | ".join(str(b) for b in buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for s, per in variance.items():
        lines.append(f"| {s} | " + " | ".join(f"{per[b]:.3g}" for b in buckets) + " |")
    lines += [
        "",
        "![variance](alq_variance.png)",
        "",
        f"## Test accuracy, 4 workers, {BITS} bits, bucket size {args.bucket}, {args.epochs} epochs, "
        f"{len(args.seeds)} seeds",
        "",
        "| scheme | accuracy % (mean) | std | bits per coordinate on the wire |",
        "|---|---|---|---|",
    ]
    n = sum(p.numel() for p in make_model(0).parameters())
    for name, values in acc.items():
        wire = 32.0 if name == "SGD" else 8 * make_quantizer(name, args.bucket).payload_bytes(n) / n
        lines.append(f"| {name} | {100 * np.mean(values):.2f} | {100 * np.std(values):.2f} | {wire:.2f} |")
    lines += ["", "![accuracy](alq_accuracy.png)", ""]
    (out / "alq.md").write_text("\n".join(lines))
    (out / "alq.json").write_text(json.dumps({"variance": variance, "accuracy": acc}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for alq.md, alq.json and the PNG plots")
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) for CI")
    parser.add_argument("--bucket", type=int, default=8192, help="bucket size of the accuracy runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, buckets, points = 2, [0], [64, 1024, 16384], [1]
    else:
        args.epochs, args.seeds, buckets, points = 30, [0, 1, 2], [64, 256, 1024, 4096, 16384], [1, 5, 15]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    data = load(seed=0)
    progress: Callable[[str], None] = lambda text: print(f"[{time.monotonic() - start:6.1f} s] {text}", flush=True)  # noqa: E731
    progress("variance against bucket size")
    variance = variance_experiment(data, buckets, points, seed=0, batch=64)
    acc: dict[str, list[float]] = {}
    for name in ("SGD", *SCHEMES):
        acc[name] = []
        for seed in args.seeds:
            acc[name].append(
                train(data, None if name == "SGD" else name, 4, args.epochs, args.bucket, seed, batch=16)
            )
        progress(f"accuracy {name}: {100 * np.mean(acc[name]):.2f} %")
    plot_variance(variance, args.out / "alq_variance.png")
    plot_accuracy(acc, args.out / "alq_accuracy.png")
    write_report(args.out, args, variance, acc, time.monotonic() - start)
    progress(f"wrote {args.out / 'alq.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
