"""Reproduce the shape of CSER's results (Xie et al., NeurIPS 2020): accuracy against overall compression ratio.

    python -m examples.repro_cser --out docs/repro            # full run (minutes on 2 cores)
    python -m examples.repro_cser --quick --out /some/folder  # a CI-sized look

Eight workers train one MLP with momentum SGD, each on its own eighth of the training set, in one process in
lockstep: every worker is a ``netagg.host_agent.compression.cser.CSERWorker`` (the class the distributed path drives
with one all_reduce per phase) and ``simulate_step`` averages the blocks they send. Methods, each at overall
compression ratios 16, 64, 256 and 1024 (elements full SGD sends per element sent): local SGD, EF-SGD,
QSparse-local-SGD, CSER-PL and CSER, against full SGD. QSparse-local-SGD, CSER-PL and CSER synchronize the model
every ``PERIOD`` steps; CSER splits its traffic evenly between the gradient (every step) and the model phase. The
test accuracy is that of the averaged model ``mean_i x_i``. Expected (paper, CIFAR-100): CSER stays near full SGD at
high ratios where EF-SGD and QSparse-local-SGD degrade.

Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the package, nothing
downloaded), split 75/25. A stand-in for CIFAR-100: image classification small enough that 8 workers times 20
configurations train in minutes, and with 168 images per worker the local models drift apart between
synchronizations, which is the effect the methods differ in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from examples.digits import Data, load
from netagg.host_agent.compression import cser as C

WORKERS = 8
PERIOD = 8
LR = 0.05
MOMENTUM = 0.9
BATCH = 16
RATIOS = (16, 64, 256, 1024)

METHODS: dict[str, Callable[[int], C.Method]] = {
    "local SGD": C.local_sgd,
    "EF-SGD": C.ef_sgd,
    "QSparse-local-SGD": lambda ratio: C.qsparse_local_sgd(ratio, PERIOD),
    "CSER-PL": lambda ratio: C.cser_pl(ratio, PERIOD),
    "CSER": lambda ratio: C.cser(ratio, PERIOD),
}



def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def train(data: Data, method: C.Method, steps: int, seed: int) -> dict:
    """Accuracy of the averaged model after ``steps`` lockstep steps of ``WORKERS`` workers, and the traffic."""
    x_tr, y_tr, x_te, y_te = data
    models = [make_model(seed) for _ in range(WORKERS)]  # the same initial model everywhere
    workers = [C.CSERWorker(list(m.parameters()), method, lr=LR, momentum=MOMENTUM, seed=seed) for m in models]
    shards = np.array_split(np.random.default_rng(seed).permutation(len(y_tr)), WORKERS)
    per_epoch = min(len(s) for s in shards) // BATCH
    orders: list[torch.Tensor] = []
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            orders = [torch.from_numpy(np.random.default_rng([seed, epoch, w]).permutation(s)) for w, s in
                      enumerate(shards)]  # fmt: skip
        for model, order in zip(models, orders, strict=True):
            idx = order[k * BATCH : (k + 1) * BATCH]
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
        phases = [w.local_step() for w in workers][0]
        C.simulate_step(workers, phases)
    evaluate = make_model(seed)
    with torch.no_grad():
        for p, mean in zip(evaluate.parameters(), C.averaged_model(workers), strict=True):
            p.copy_(mean)
        accuracy = float((evaluate(x_te).argmax(1) == y_te).float().mean())
    return {"accuracy": accuracy, "ratio": workers[0].compression_ratio}


def plot(results: dict, sgd: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(100 * np.mean(sgd), color="grey", linestyle="--", label="full SGD")
    for name, per_ratio in results.items():
        ratios = sorted(per_ratio, key=int)
        means = [100 * np.mean([r["accuracy"] for r in per_ratio[q]]) for q in ratios]
        spread = [100 * np.std([r["accuracy"] for r in per_ratio[q]]) for q in ratios]
        ax.errorbar([int(q) for q in ratios], means, yerr=spread, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("overall compression ratio")
    ax.set_ylabel("test accuracy of the averaged model (%)")
    ax.set_title(f"{WORKERS} workers on digits")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, args: argparse.Namespace, results: dict, sgd: list[float], seconds: float) -> None:
    ratios = [str(q) for q in args.ratios]
    lines = [
        "# CSER reproduction",
        "",
        f"Generated by `python -m examples.repro_cser{' --quick' if args.quick else ''} --out {args.out}` "
        f"in {seconds:.0f} s ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end).",
        f"{WORKERS} workers; scikit-learn's digits; MLP 64-128-10; {args.steps} steps of batch {BATCH} per worker; "
        f"momentum {MOMENTUM}, learning rate {LR}; period {PERIOD} for QSparse-local-SGD, CSER-PL and CSER; "
        f"seeds {args.seeds}. Test accuracy (%) of the averaged model, mean ± std over seeds; in brackets the "
        "measured ratio (blocks are rounded to whole elements, at least one per tensor).",
        "",
        f"Full SGD: {100 * np.mean(sgd):.2f} ± {100 * np.std(sgd):.2f}",
        "",
        "| method | " + " | ".join(f"ratio {q}" for q in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for name, per_ratio in results.items():
        cells = []
        for q in ratios:
            acc = [100 * r["accuracy"] for r in per_ratio[q]]
            cells.append(f"{np.mean(acc):.2f} ± {np.std(acc):.2f} ({np.mean([r['ratio'] for r in per_ratio[q]]):.0f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy against compression ratio](cser_accuracy.png)", ""]
    (out / "cser.md").write_text("\n".join(lines))
    (out / "cser.json").write_text(json.dumps({"sgd": sgd, "results": results}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for cser.md, cser.json and the plot")
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.ratios = 120, [0], (16, 64)
    else:
        args.steps, args.seeds, args.ratios = 1200, [0, 1], RATIOS
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    start = time.monotonic()
    data = load()
    progress: Callable[[str], None] = lambda text: print(f"[{time.monotonic() - start:6.1f} s] {text}", flush=True)  # noqa: E731
    sgd = [train(data, C.full_sgd(), args.steps, seed)["accuracy"] for seed in args.seeds]
    progress(f"full SGD: {100 * np.mean(sgd):.2f} %")
    results: dict[str, dict[str, list[dict]]] = {}
    for name, make in METHODS.items():
        results[name] = {}
        for ratio in args.ratios:
            results[name][str(ratio)] = [train(data, make(ratio), args.steps, seed) for seed in args.seeds]
            acc = np.mean([r["accuracy"] for r in results[name][str(ratio)]])
            progress(f"{name} at ratio {ratio}: {100 * acc:.2f} %")
    plot(results, sgd, args.out / "cser_accuracy.png")
    write_report(args.out, args, results, sgd, time.monotonic() - start)
    progress(f"wrote {args.out / 'cser.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
