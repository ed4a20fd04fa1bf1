"""The CSER family across real processes, one all_reduce per phase: over gloo and over netagg (through the switch)."""

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

WORKER = Path(__file__).with_name("cser_worker.py")
WORLD = 2


def run(tmp_path: Path, backend: str, env: dict[str, str]) -> list[dict]:
    master = free_port()
    procs, outs = [], []
    for rank in range(WORLD):
        out = tmp_path / f"cser-{backend}-{rank}.json"
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(master), OMP_NUM_THREADS="1", **env)  # fmt: skip
        log = (tmp_path / f"cser-{backend}-{rank}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), backend, str(out)], env=rank_env,
                                      stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        outs.append(out)
    try:
        for proc in procs:
            proc.wait(240)
    finally:
        for proc in procs:  # only what this test started, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, out) in enumerate(zip(procs, outs, strict=True)):
        log = (tmp_path / f"cser-{backend}-{rank}.log").read_text(errors="replace")
        assert proc.returncode == 0 and out.exists(), f"rank {rank} failed:\n{log[-3000:]}"
    return [json.loads(out.read_text()) for out in outs]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")).start() as running:
        yield running


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
