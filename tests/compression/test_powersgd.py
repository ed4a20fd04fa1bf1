"""torch's PowerSGD hook across real processes over gloo and over netagg, whose P and Q sums the switch computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ranks import run_ranks

from netagg.local import LocalStack

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("powersgd_worker.py")
WORLD = 2
STEPS, START, RANK = 12, 3, 2
#: The worker's layers: (rows, columns) of each weight, and the bias lengths.
WEIGHTS, BIASES = [(64, 32), (8, 64)], [64, 8]


def run(tmp_path: Path, backend: str, env: dict[str, str]) -> list[dict]:
    return run_ranks(WORKER, [backend], tmp_path, f"powersgd-{backend}", world=WORLD, env=env)


@pytest.fixture(scope="module")
def gloo_reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run(tmp_path_factory.mktemp("gloo"), "gloo", {})


def check(reports: list[dict]) -> None:
    for report in reports:
        # One plain all-reduce per step before START, then three: uncompressed tensors, Ps, Qs.
        assert report["calls"] == [1] * START + [3] * (STEPS - START)
        # Every sum the hook received is within the quantizer's bound of the exact sum (gloo: float32 rounding).
        assert max(report["excess"]) <= 0, report["excess"]
        # torch's own count: the weights as P (rows x rank) and Q (columns x rank), the biases as they are.
        steps = STEPS - START
        assert report["numel_before"] == steps * (sum(r * c for r, c in WEIGHTS) + sum(BIASES))
        assert report["numel_after"] == steps * (sum((r + c) * RANK for r, c in WEIGHTS) + sum(BIASES))
        assert report["ratio"] > 4
    # DDP's invariant: every rank holds the same model.
    assert reports[0]["params"] == reports[1]["params"]
    losses = reports[0]["losses"]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses  # it trains


def test_powersgd_over_gloo(gloo_reports: list[dict]) -> None:
    check(gloo_reports)


def test_powersgd_over_netagg_matches_gloo(tmp_path: Path, stack: LocalStack, gloo_reports: list[dict]) -> None:
    reports = run(tmp_path, "netagg", stack.env)
    check(reports)
    for report in reports:
        # Every step's all-reduces went through the switch (at least one RESULT each).
        assert report["switch_results"] >= START + 3 * (STEPS - START)
    # Within the bound at every sum, training follows gloo's (measured: losses within 5e-8, parameters within 1e-7).
    np.testing.assert_allclose(reports[0]["losses"], gloo_reports[0]["losses"], rtol=1e-6)
    np.testing.assert_allclose(reports[0]["params"], gloo_reports[0]["params"], rtol=0, atol=1e-6)
