"""torch.distributed over netagg: DDP, delegated collectives, PowerSGD and a dying peer, on loopback.

Each test starts a software switch (UDP mode) and a controller (netagg.local.LocalStack) and runs the ranks as
separate processes with the env:// rendezvous torchrun uses.
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
WORKER = Path(__file__).with_name("worker.py")


@pytest.fixture
def stack(tmp_path: Path):
    with LocalStack(tmp_path / "stack").start() as running:
        yield running


def run_ranks(
    stack: LocalStack,
    tmp_path: Path,
    scenario: str,
    world: int,
    *,
    deadline: float = 20.0,
    timeout: float = 180.0,
) -> list[dict]:
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
        if scenario == "peer_dies" and rank == 1:
            results.append({})
            continue
        assert procs[rank].returncode == 0 and out.exists(), f"rank {rank} failed:\n{logs}\n{stack.logs()}"
        results.append(json.loads(out.read_text()))
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_gradients_match_gloo_within_the_quantizer_bound(stack, tmp_path, world: int) -> None:
    for result in run_ranks(stack, tmp_path, "ddp", world):
        assert result["worst_excess"] <= 0.0, result
        assert result["results_received"] >= 5, "the gradients did not go through the switch"


def test_collectives(stack, tmp_path) -> None:
    world = 3
    results = run_ranks(stack, tmp_path, "collectives", world)
    for rank, r in enumerate(results):
        assert r["sum"] == [6.0, 6.0, 6.0]
        assert r["avg"] == pytest.approx(2.0, rel=1e-6)
        assert r["int32"] == 3000 + 21
        assert r["bf16"] == 3.0
        assert r["max"] == 2.0
        assert r["broadcast"] == 20.0
        assert r["all_gather"] == [[q, q + 0.5] for q in range(world)]
        assert r["all_gather_object"] == [{"rank": q} for q in range(world)]
        assert r["reduce_scatter"] == sum(rank + q for q in range(world))
        assert r["all_to_all"] == [rank + 10.0 * q for q in range(world)]
        assert r["async_value"] == 3.0
        # 1000 + 10 + 70 + 33 + 5 elements of SUM/AVG at 256 lanes: at least 8 RESULTs came from the switch
        assert r["results_received"] >= 8


def test_powersgd_hook_trains(stack, tmp_path) -> None:
    for r in run_ranks(stack, tmp_path, "powersgd", 2):
        assert r["last"] < 0.5 * r["first"], r


def test_a_dying_peer_raises_a_distributed_error(stack, tmp_path) -> None:
    results = run_ranks(stack, tmp_path, "peer_dies", 3, deadline=3.0)
    for rank in (0, 2):
        r = results[rank]
        assert r["error"] == "DistBackendError", r
        assert "did not complete" in r["message"] and "job" in r["message"]
        assert r["after"] < 30.0
