"""Train a small classifier with DistributedDataParallel over netagg or gloo, for a side-by-side comparison.

    torchrun --nproc-per-node 4 examples/train_ddp.py --backend netagg   # needs a running softswitch + controller
    torchrun --nproc-per-node 4 examples/train_ddp.py --backend gloo
    torchrun --nproc-per-node 2 examples/train_ddp.py --backend netagg --device cuda   # one GPU per rank, or shared

The data set is scikit-learn's ``make_classification`` (generated, nothing downloaded): the same seed gives the same
train/test split on every rank and for both backends. Rank 0 prints one line per epoch and, with ``--history``,
writes the per-step loss and per-epoch test accuracy as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def make_data(samples: int, test_size: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    x, y = make_classification(
        n_samples=samples + test_size,
        n_features=40,
        n_informative=24,
        n_redundant=8,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=0.9,
        flip_y=0.02,
        random_state=seed,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6

    def as_set(features: np.ndarray, labels: np.ndarray) -> TensorDataset:
        standardized = torch.tensor((features - mean) / std, dtype=torch.float32)
        return TensorDataset(standardized, torch.tensor(labels, dtype=torch.long))

    return as_set(x_train, y_train), as_set(x_test, y_test)


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(40, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 4),
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, device: torch.device) -> float:
    model.eval()
    x, y = (t.to(device) for t in data.tensors)
    correct = (model(x).argmax(dim=1) == y).sum().item()
    model.train()
    return 100.0 * correct / len(y)


def attach_hook(model: DistributedDataParallel, hook: str) -> None:
    if hook == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "powersgd":
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=10
        )
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", choices=["netagg", "gloo"], default="netagg", help="torch.distributed backend"
    )
    parser.add_argument("--epochs", type=int, default=8, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank mini-batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--samples", type=int, default=8000, help="training samples")
    parser.add_argument("--test-size", type=int, default=2000, help="held-out test samples")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, model init and shuffling")
    parser.add_argument("--hook", choices=["none", "fp16", "powersgd"], default="none", help="DDP comm hook")
    parser.add_argument("--history", type=Path, help="rank 0 writes losses and accuracies here (JSON)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where the model and its gradients live"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")

    if args.backend == "netagg":
        import netagg.host_agent.torch_backend  # noqa: F401  (registers the backend)
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.device == "cuda":  # local rank r on GPU r (several ranks share a GPU when there are fewer)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    train, test = make_data(args.samples, args.test_size, args.seed)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    model = DistributedDataParallel(
        make_model().to(device), device_ids=[device] if device.type == "cuda" else None
    )
    attach_hook(model, args.hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            history["loss"].append(loss.item())
        acc = accuracy(model.module, test, device)
        history["accuracy"].append(acc)
        if rank == 0:
            recent = history["loss"][-len(loader) :]
            print(
                f"[{args.backend}] epoch {epoch + 1}/{args.epochs}  loss {sum(recent) / len(recent):.4f}  "
                f"test accuracy {acc:.2f}%  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    if rank == 0:
        print(f"[{args.backend}] final test accuracy {history['accuracy'][-1]:.2f}% on {len(test)} samples")
        if args.history:
            args.history.write_text(json.dumps({"backend": args.backend, "world_size": world, **history}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
