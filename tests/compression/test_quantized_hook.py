"""The quantized all-gather DDP hook across real processes: on gloo, and on netagg (served by its gloo group)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from netagg.local import LocalStack, free_port

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("hook_worker.py")
WORLD = 2


def run(tmp_path: Path, scheme: str, backend: str, controller: str = "") -> list[dict]:
    master = free_port()
    procs, outs = [], []
    for rank in range(WORLD):
        out = tmp_path / f"{scheme}-{backend}-{rank}.json"
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(master), OMP_NUM_THREADS="1", NETAGG_CONTROLLER=controller)  # fmt: skip
        log = (tmp_path / f"{scheme}-{backend}-{rank}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scheme, backend, str(out)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        outs.append(out)
    try:
        for proc in procs:
            proc.wait(300)
    finally:
        for proc in procs:  # only what this test started, by PID
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, out) in enumerate(zip(procs, outs, strict=True)):
        log = (tmp_path / f"{scheme}-{backend}-{rank}.log").read_text()
        assert proc.returncode == 0 and out.exists(), f"rank {rank} failed:\n{log[-3000:]}"
    return [json.loads(out.read_text()) for out in outs]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")).start() as running:
        yield running


def check(reports: list[dict], scheme: str) -> None:
    first = reports[0]
    for step, got in enumerate(first["steps"]):
        for other in reports[1:]:  # DDP's invariant: every rank holds the same averaged gradient
            assert other["steps"][step]["hooked"] == got["hooked"], f"ranks differ at step {step}"
        hooked = np.concatenate([np.array(p) for p in got["hooked"]])
        exact = np.concatenate([np.array(p) for p in got["exact"]])
        # The squared error of the average is a sum of many independent roundings: within a factor of 10 of its
        # closed-form expectation (an exact, unquantized average would fail the lower bound).
        sq_error = float(np.sum((hooked - exact) ** 2))
        expected = got["expected_sq_error"]
        assert 0.1 * expected < sq_error < 10 * expected, f"step {step}: {sq_error:.3g} vs {expected:.3g}"
        assert np.all(np.isfinite(hooked))
    for r in reports:
        assert r["steps_counted"] == 3
        # 4-bit codes (2 for TernGrad), plus norms and levels: a little under 8x (16x).
        assert 6 < r["bytes_dense"] / r["bytes_sent"] < (16 if scheme == "TRN" else 8)


@pytest.mark.parametrize("scheme", ["NUQSGD", "QSGDinf", "TRN", "ALQ", "AMQ"])
def test_hook_over_gloo(tmp_path: Path, scheme: str) -> None:
    check(run(tmp_path, scheme, "gloo"), scheme)


def test_hook_over_netagg(tmp_path: Path, stack: LocalStack) -> None:
    check(run(tmp_path, "ALQ", "netagg", stack.api), "ALQ")
