"""The quantized all-gather DDP hook across real processes: on gloo, and on netagg (served by its gloo group)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ranks import run_ranks

from netagg.local import LocalStack

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("hook_worker.py")
WORLD = 2


def run(tmp_path: Path, scheme: str, backend: str, controller: str = "") -> list[dict]:
    return run_ranks(WORKER, [scheme, backend], tmp_path, f"{scheme}-{backend}", world=WORLD,
                     env={"NETAGG_CONTROLLER": controller})  # fmt: skip


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
