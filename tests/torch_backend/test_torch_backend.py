"""torch.distributed over netagg: DDP, delegated collectives, PowerSGD and a dying peer, on loopback.

Each test starts a software switch (UDP mode) and a controller (netagg.local.LocalStack) and runs the ranks as
separate processes with the env:// rendezvous torchrun uses.
"""

from __future__ import annotations

import pytest
from torch_harness import run_ranks

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")


#: The device path (quantized by torch ops on the tensor's device, in pieces of 4 blocks) for CPU tensors.
DEVICE_PATH = {"NETAGG_DEVICE_PATH": "always", "NETAGG_DEVICE_PIECE": str(4 * 4 * 256)}


@pytest.mark.parametrize(("world", "env"), [(2, {}), (4, {}), (2, DEVICE_PATH)], ids=["2", "4", "2-device-path"])
def test_ddp_gradients_match_gloo_within_the_quantizer_bound(stack, tmp_path, world: int, env: dict) -> None:
    for result in run_ranks(stack, tmp_path, "ddp", world, extra_env=env):
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
    results = run_ranks(stack, tmp_path, "peer_dies", 3, deadline=3.0, vanishing=[1])
    for rank in (0, 2):
        r = results[rank]
        assert r["error"] == "DistBackendError", r
        assert "did not complete" in r["message"] and "job" in r["message"]
        assert r["after"] < 30.0
