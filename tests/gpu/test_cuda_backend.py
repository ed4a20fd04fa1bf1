"""CUDA tensors through the netagg backend: all_reduce of every switch dtype, AVG and DDP, on loopback.

Skipped, with the reason, where torch sees no CUDA device.
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
if not torch.cuda.is_available():
    pytest.skip("torch.cuda.is_available() is false: no CUDA device here", allow_module_level=True)

WORKER = Path(__file__).with_name("cuda_worker.py")


def test_cuda_tensors_are_summed_through_the_switch_and_stay_on_the_gpu(tmp_path: Path) -> None:
    world = 2
    with LocalStack(tmp_path / "stack").start() as stack:
        master, procs = free_port(), []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(master), NETAGG_CONTROLLER=stack.api)  # fmt: skip
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
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for dtype in ("torch.float32", "torch.float16", "torch.bfloat16", "torch.int32"):
            assert r[dtype] == ["cuda", 3, 3], (dtype, r)
        assert r["avg"] == 0.5 and r["ddp_grad_device"] == "cuda", r
        assert r["results"] >= 8, "the CUDA tensors did not go through the switch"
