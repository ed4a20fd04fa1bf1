"""Runs a worker script as the ranks of one torch.distributed job (env:// rendezvous) and reads their reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from netagg.local import free_port

#: Seconds every rank gets before it is killed.
RANK_TIMEOUT = 240.0


def run_ranks(
    worker: Path, args: Sequence[str], tmp_path: Path, label: str, *, world: int = 2, env: Mapping[str, str] = {}
) -> list[dict]:
    """``python worker *args OUT.json`` once per rank; each rank's JSON report, or an assertion quoting its log."""
    master = free_port()
    procs, outs, logs = [], [], []
    for rank in range(world):
        out, log = tmp_path / f"{label}-{rank}.json", tmp_path / f"{label}-{rank}.log"
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(master), OMP_NUM_THREADS="1", **env)  # fmt: skip
        with log.open("wb") as sink:
            procs.append(subprocess.Popen([sys.executable, str(worker), *args, str(out)], env=rank_env,
                                          stdout=sink, stderr=subprocess.STDOUT))  # fmt: skip
        outs.append(out)
        logs.append(log)
    try:
        for proc in procs:
            proc.wait(RANK_TIMEOUT)
    finally:
        for proc in procs:  # only what this call started, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, out, log) in enumerate(zip(procs, outs, logs, strict=True)):
        text = log.read_text(errors="replace")
        assert proc.returncode == 0 and out.exists(), f"rank {rank} failed:\n{text[-3000:]}"
    return [json.loads(out.read_text()) for out in outs]
