"""Train examples/train_ddp.py with netagg and with gloo, same seeds, and compare accuracy and loss curves.

    python examples/compare_backends.py --workers 4 --epochs 8 --plot docs/training_fidelity.png

netagg runs through a software switch and a controller started on loopback (netagg.local.LocalStack); gloo runs
torch's own ring all-reduce. Prints both final test accuracies and their difference; writes a PNG of the loss
curves and per-epoch accuracies when --plot is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from netagg.local import LocalStack, free_port

EXAMPLE = Path(__file__).with_name("train_ddp.py")


def train(backend: str, workers: int, epochs: int, seed: int, folder: Path, controller: str | None) -> dict:
    history = folder / f"{backend}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if controller:
        env["NETAGG_CONTROLLER"] = controller
    argv = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={workers}",
        f"--master-port={free_port()}", str(EXAMPLE), "--backend", backend, "--epochs", str(epochs),
        "--seed", str(seed), "--history", str(history),
    ]  # fmt: skip
    subprocess.run(argv, env=env, check=True)
    return json.loads(history.read_text())


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        losses = run["loss"]
        window = max(1, len(losses) // 100)
        smooth = [sum(losses[i : i + window]) / window for i in range(0, len(losses) - window + 1, window)]
        loss_ax.plot([i * window for i in range(len(smooth))], smooth, label=name)
        acc_ax.plot(range(1, len(run["accuracy"]) + 1), run["accuracy"], marker="o", label=name)
    loss_ax.set(title="training loss (rank 0, smoothed)", xlabel="step", ylabel="cross-entropy")
    acc_ax.set(title="test accuracy", xlabel="epoch", ylabel="%")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    world = next(iter(runs.values()))["world_size"]
    fig.suptitle(f"DDP, {world} workers: netagg (through the switch) vs gloo (ring all-reduce)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="DDP processes per backend")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write the loss/accuracy curves to this PNG")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="netagg-compare-") as tmp:
        folder = Path(tmp)
        runs = {"gloo": train("gloo", args.workers, args.epochs, args.seed, folder, None)}
        with LocalStack(folder / "stack").start() as stack:
            runs["netagg"] = train("netagg", args.workers, args.epochs, args.seed, folder, stack.api)
    gloo, netagg = runs["gloo"]["accuracy"][-1], runs["netagg"]["accuracy"][-1]
    print(f"final test accuracy: gloo {gloo:.2f}%  netagg {netagg:.2f}%  difference {netagg - gloo:+.2f} points")
    gaps = [abs(a - b) for a, b in zip(runs["gloo"]["loss"], runs["netagg"]["loss"], strict=True)]
    print(f"per-step training loss, |netagg - gloo|: max {max(gaps):.3g}, mean {sum(gaps) / len(gaps):.3g} "
          f"over {len(gaps)} steps")
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
