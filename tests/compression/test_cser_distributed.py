"""The CSER family across real processes, one all_reduce per phase: over gloo and over netagg (through the switch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ranks import run_ranks

from netagg.local import LocalStack

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("cser_worker.py")
WORLD = 2


def run(tmp_path: Path, backend: str, env: dict[str, str]) -> list[dict]:
    return run_ranks(WORKER, [backend], tmp_path, f"cser-{backend}", world=WORLD, env=env)


def check(reports: list[dict], tolerance: float) -> None:
    """The invariants on every rank and step, and the distributed run equal to the in-process simulation."""
    for name, first in reports[0]["methods"].items():
        others = [r["methods"][name] for r in reports[1:]]
        model_phases = 0
        for step, got in enumerate(first["steps"]):
            where = f"{name}, step {step}"
            for other in others:
                theirs = other["steps"][step]
                assert theirs["blocks"] == got["blocks"], f"{where}: ranks chose different blocks"
                # x_i + r_i is the same on every worker (float32 rounding of x - u and r + u aside).
                np.testing.assert_allclose(theirs["sum"], got["sum"], rtol=0, atol=1e-5, err_msg=where)
            if "x_on_block" in got:
                model_phases += 1
                assert not any(got["r_on_block"]), f"{where}: the residual of a synchronized block is not reset"
                for other in others:  # after the model phase x_i[B] = (x_i + r_i)[B] - mean: equal everywhere
                    np.testing.assert_allclose(other["steps"][step]["x_on_block"], got["x_on_block"],
                                               rtol=0, atol=1e-5, err_msg=where)  # fmt: skip
        assert model_phases == 3 if name != "EF-SGD" else model_phases == len(first["steps"]), name
        simulated = reports[0]["simulated"][name]
        for rank, report in enumerate(reports):
            np.testing.assert_allclose(report["methods"][name]["x"], simulated["x"][rank], rtol=0, atol=tolerance,
                                       err_msg=f"{name}: rank {rank} differs from the simulation")  # fmt: skip
            np.testing.assert_allclose(report["methods"][name]["averaged"], simulated["averaged"], rtol=0,
                                       atol=tolerance, err_msg=f"{name}: averaged model")  # fmt: skip
        if name != "local SGD":  # local SGD's blocks are whole tensors: the workers' x_i are equal, r_i zero
            assert not np.allclose(first["x"], others[0]["x"], atol=1e-4), f"{name}: the local models never differed"


def test_cser_family_over_gloo(tmp_path: Path) -> None:
    reports = run(tmp_path, "gloo", {})
    check(reports, tolerance=1e-6)
    assert reports[0]["methods"]["CSER"]["ratio"] > 6  # nominal 8; blocks are rounded to whole elements


def test_cser_family_over_netagg(tmp_path: Path, stack: LocalStack) -> None:
    reports = run(tmp_path, "netagg", stack.env)
    # The switch's sums are block floating point: each mean is within 2**-29 of the block's largest |value|.
    check(reports, tolerance=1e-5)
    for report in reports:
        assert report["switch_results"] >= 5 * 9, "the blocks did not go through the switch"
