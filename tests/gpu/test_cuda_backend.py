"""CUDA tensors through the netagg backend on loopback: every switch dtype, SUM and AVG, a NaN block and DDP,
quantized on the GPU (the default device path) against the host path (the same bits), gloo and, with a GPU per
rank, NCCL (within the quantizer's bound); and one 64 MiB all_reduce timed per path (printed, not asserted).

Skipped, with the reason, where torch sees no CUDA device; tests/host_agent/test_torch_device.py runs the same
device path on CPU tensors everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netagg.local import LocalStack, free_port

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("cuda_worker.py")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is false: no CUDA device here")
def test_cuda_tensors_are_summed_through_the_switch_and_stay_on_the_gpu(tmp_path: Path) -> None:
    _check(_run_worker(tmp_path, {}), "cuda")


def test_the_worker_itself_on_cpu_tensors(tmp_path: Path) -> None:
    """The same script on CPU tensors (device path forced on, 1 MiB timed): checks it where no GPU is."""
    _check(_run_worker(tmp_path, {"WORKER_DEVICE": "cpu", "WORKER_TIMING_MIB": "1"}), "cpu")


def _run_worker(tmp_path: Path, extra: dict[str, str]) -> list[dict]:
    world = 2
    with LocalStack(tmp_path / "stack").start() as stack:
        master, procs = free_port(), []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(master), NETAGG_CONTROLLER=stack.api, OMP_NUM_THREADS="1",
                       **extra)  # fmt: skip
            log = (tmp_path / f"rank{rank}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"rank{rank}.json")],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        try:
            for proc in procs:
                proc.wait(180)
        finally:
            for proc in procs:  # only the processes this test started, by PID
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    logs = "".join((tmp_path / f"rank{r}.log").read_text(errors="replace")[-2000:] for r in range(world))
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{logs}"
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)]


def _check(reports: list[dict], device: str) -> None:
    for rank, r in enumerate(reports):
        print(f"rank {rank}:", json.dumps(r, indent=1))  # the report (pytest -s shows it)
        for name, case in r["cases"].items():
            assert case["device"] == device and case["same_bits_as_host_path"], (name, case)
            if "equal_to_gloo" in case:
                assert case["equal_to_gloo"], (name, case)
            else:
                assert case["worst_excess_vs_gloo"] <= 0.0 and case["nan_where_gloo_nan"], (name, case)
                assert case["nan_elements"] == (256 if name == "nan_block" else 0), (name, case)  # one block
        ddp = r["ddp"]
        assert ddp["grad_device"] == device and ddp["worst_excess_vs_gloo"] <= 0.0, ddp
        assert ddp["worst_excess_vs_nccl"] is None or ddp["worst_excess_vs_nccl"] <= 0.0, ddp
        assert r["results"] >= 100, "the CUDA tensors did not go through the switch"
