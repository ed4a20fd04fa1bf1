"""Process groups as torch uses them: names, inputs gloo takes, and the switch's slots over a group's life.

Each case failed before: ``pg.group_name``, functional collectives and ``destroy_process_group(subgroup)`` raised
"ProcessGroup name not set"; sparse COO tensors failed in staging and a leaf that requires grad was refused; a
process that exited without destroy_process_group kept its jobs until the lease (30 s) ran out, and logged
"'NoneType' object is not callable" at exit; a group held its slots from creation to destruction, so a fifth group
over a 256-slot pool failed with PoolExhausted.
"""

from __future__ import annotations

import threading
import time

import pytest
from torch_harness import run_ranks

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")


def _logs(tmp_path, scenario: str, world: int) -> str:
    return "".join((tmp_path / f"{scenario}-{r}.log").read_text(errors="replace") for r in range(world))


def test_group_names_functional_collectives_and_destroying_a_subgroup(stack, tmp_path) -> None:
    for r in run_ranks(stack, tmp_path, "names", 2):
        assert r["world_name"] == "0" and r["sub_name"] == "1", r
        assert r["functional"] == [3.0, 3.0] and r["functional_sub"] == [2.0] * 5, r
        assert r["sub_results"] >= 1, "the functional all_reduce did not go through the switch"
        assert r["held_before"] and not r["held_after"], "destroying the subgroup did not give its job back"


def test_sparse_and_requires_grad_tensors_sum_as_on_gloo(stack, tmp_path) -> None:
    for r in run_ranks(stack, tmp_path, "sparse_and_grad", 2):
        ours, gloo = r["sparse"]
        assert ours == gloo == [1.0, 2.0, 0.0, 0.0, 4.0, 0.0], r
        for dtype in ("torch.float32", "torch.bfloat16"):
            leaf, twin, requires_grad, is_leaf = r[f"grad_{dtype}"]
            assert leaf == twin == [2.0, 2.0] and requires_grad and is_leaf, (dtype, r)
        assert r["grad_results"] >= 2, "the requires_grad leaves did not go through the switch"


def test_processes_that_exit_without_destroy_give_their_jobs_back(stack, tmp_path) -> None:
    controller = stack.controller()
    for run in range(3):  # the third back-to-back run found the pool exhausted
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        results = run_ranks(stack, folder, "exit_without_destroy", 2)
        jobs = controller.jobs()
        assert jobs["jobs"] == [] and jobs["pool"]["free"] == jobs["pool"]["size"], (run, jobs)
        logs = _logs(folder, "exit_without_destroy", 2)
        assert "NoneType" not in logs and "Traceback" not in logs, logs
        assert len(set(results[0]["jobs"])) == 2


def test_a_process_killed_without_leaving_frees_its_job_within_the_lease(stack, tmp_path) -> None:
    run_ranks(stack, tmp_path, "dies_silently", 2, extra_env={"NETAGG_LEASE": "2"})
    gone = time.monotonic()
    controller, tick = stack.controller(), threading.Event()
    while controller.jobs()["jobs"] and time.monotonic() - gone < 20.0:
        tick.wait(0.1)
    freed_after = time.monotonic() - gone
    assert controller.jobs()["jobs"] == [], controller.jobs()
    assert freed_after < 2.0 + 1.5, f"the job was freed {freed_after:.1f} s after its ranks died (lease 2 s)"


def test_more_groups_than_the_pool_holds_take_turns_at_the_slots(stack, tmp_path) -> None:
    # The stack's pool holds 4 jobs of 64 slots; 10 groups that never use the switch and 8 that do.
    for r in run_ranks(stack, tmp_path, "many_groups", 2, extra_env={"NETAGG_IDLE_RELEASE": "0.5"}):
        assert r["idle_held"] == 0, r
        assert r["sums"] == [3.0] * 8 and r["again"] == 2.0, r
        assert max(r["held"]) <= 4, r
        assert r["generation"].endswith(".1"), r  # group 0 gave its job back and joined again


def test_ddp_over_50_groups_created_and_destroyed_keeps_the_pool(stack, tmp_path) -> None:
    for r in run_ranks(stack, tmp_path, "ddp_group_loop", 2, timeout=300.0):
        assert r["jobs"] == [] and r["pool"]["free"] == r["pool"]["size"], r
