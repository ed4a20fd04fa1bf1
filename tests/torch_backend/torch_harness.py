"""Runs the ranks of a worker.py scenario as processes with torchrun's env:// rendezvous, against a LocalStack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from netagg.local import LocalStack, free_port

WORKER = Path(__file__).with_name("worker.py")


def run_ranks(
    stack: LocalStack,
    tmp_path: Path,
    scenario: str,
    world: int,
    *,
    deadline: float = 20.0,
    timeout: float = 180.0,
    vanishing: Sequence[int] = (),
    extra_env: Mapping[str, str] | None = None,
) -> list[dict]:
    """Each rank's JSON report; ``vanishing`` ranks are expected to exit without one (their entry is empty).

    ``extra_env`` adds to the ranks' environment (e.g. NETAGG_* settings).
    """
    master = free_port()
    procs, outs = [], []
    for rank in range(world):
        out = tmp_path / f"{scenario}-{rank}.json"
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(master),
            NETAGG_CONTROLLER=stack.api,
            NETAGG_DEADLINE=str(deadline),
            NETAGG_JOIN_TIMEOUT="60",
            OMP_NUM_THREADS="1",
            **(extra_env or {}),
        )
        log = (tmp_path / f"{scenario}-{rank}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, str(out)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        outs.append(out)
    try:
        for proc in procs:
            proc.wait(timeout)
    finally:
        for proc in procs:  # only the processes this test started, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join(
        (tmp_path / f"{scenario}-{r}.log").read_text(errors="replace")[-3000:] for r in range(world)
    )
    results = []
    for rank, out in enumerate(outs):
        if rank in vanishing:
            results.append({})
            continue
        assert procs[rank].returncode == 0 and out.exists(), f"rank {rank} failed:\n{logs}\n{stack.logs()}"
        results.append(json.loads(out.read_text()))
    return results
