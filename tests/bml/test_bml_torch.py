"""The torch backend with NETAGG_ALGORITHM=bml: all_reduce summed by BML between the ranks' cards on loopback.

Four torch processes on BCube(2, 2), each card a 127.x address, no switch and no controller: int32 sums exact (and
wrapping as gloo's); float32 sums the same bits on every rank, the bits of the fixed-point reference computed here
with the quantizer's numpy reference, and within its error bound of the float64 sum; a NaN or inf in one rank's
block makes that block NaN on every rank; a rank whose card is missing makes every rank fail fast, naming it. The
configuration errors (unknown algorithm, no plan, a plan of another size, a file that is no plan) are raised
where the group is created, before it waits for any other rank (tests/unit/test_bml_torch_options.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fixed_point import LANES, fixed_point_reference

from netagg.host_agent.bml import BCube
from netagg.host_agent.bml_transport import BmlPlan
from netagg.local import free_port

torch = pytest.importorskip("torch")

import torch_bml_worker as worker  # noqa: E402  (after torch is known to be present)

pytestmark = pytest.mark.loopback

WORKER = Path(worker.__file__)
CUBE = BCube(2, 2)
WORLD = CUBE.hosts
#: Failures must come long before the deadline the ranks run with.
DEADLINE, FAST = 20.0, 10.0
#: Seconds the ranks may take in all (they take about 10 on 2 cores).
TIMEOUT = 120.0
MISSING_CARD = "192.0.2.1"  # TEST-NET-1: on no interface here


def loopback_plan(cube: BCube) -> BmlPlan:
    """Host h's level-l card: 127.<l + 10>.0.<h + 1> (every 127/8 address is local)."""
    return BmlPlan(cube, tuple(tuple(f"127.{lvl + 10}.0.{h + 1}" for lvl in range(cube.k)) for h in range(cube.hosts)))


@dataclass
class Ranks:
    plan: BmlPlan
    reports: list[dict]
    arrays: list[dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Ranks:
    """One run of the worker on every rank (the torch processes are the slow part: both tests read it)."""
    tmp_path = tmp_path_factory.mktemp("bml-torch")
    plan = loopback_plan(CUBE)
    plan_file, broken_file = tmp_path / "plan.json", tmp_path / "broken-plan.json"
    plan_file.write_text(plan.to_json())
    addresses = [list(cards) for cards in plan.addresses]
    addresses[1][1] = MISSING_CARD
    broken_file.write_text(BmlPlan(CUBE, tuple(tuple(cards) for cards in addresses)).to_json())
    master = free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(master),
            NETAGG_ALGORITHM="bml",
            NETAGG_BML_PLAN=str(plan_file),
            NETAGG_CONTROLLER="127.0.0.1:1",  # nothing listens there: BML must not need a controller
            NETAGG_DEADLINE=str(DEADLINE),
            NETAGG_JOIN_TIMEOUT=str(DEADLINE),
            OMP_NUM_THREADS="1",
        )
        log = (tmp_path / f"{rank}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(tmp_path / str(rank)), str(broken_file)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        for proc in procs:
            proc.wait(TIMEOUT)
    finally:
        for proc in procs:  # only the processes this test started, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join((tmp_path / f"{r}.log").read_text(errors="replace")[-3000:] for r in range(WORLD))
    reports, arrays = [], []
    for rank, proc in enumerate(procs):
        out = tmp_path / str(rank)
        assert proc.returncode == 0 and out.with_suffix(".npz").exists(), f"rank {rank} failed:\n{logs}"
        reports.append(json.loads(out.with_suffix(".json").read_text()))
        arrays.append(dict(np.load(out.with_suffix(".npz"))))
    return Ranks(plan, reports, arrays)


def test_bml_sums_are_exact_for_int32_and_the_same_bits_on_every_rank_for_floats(ranks: Ranks) -> None:
    plan = ranks.plan
    ints = [worker.int32_input(r) for r in range(WORLD)]
    with np.errstate(over="ignore"):
        int_sum = np.sum(ints, axis=0, dtype=np.int32)  # wraps, as gloo's int32 sum does
    floats = [worker.float32_input(r) for r in range(WORLD)]
    fixed, exact, bound = fixed_point_reference(floats)
    special = [worker.special_input(r) for r in range(WORLD)]
    special_fixed, _, _ = fixed_point_reference(special)
    halves = [worker.half_input(r) for r in range(WORLD)]
    first = ranks.arrays[0]
    for rank, (report, got) in enumerate(zip(ranks.reports, ranks.arrays, strict=True)):
        # The sums went between the ranks' cards, each connection on its own card; nothing through a switch.
        assert report["bound"] == {str(lvl): [plan.addresses[rank][lvl]] for lvl in range(CUBE.k)}, report
        assert report["switch_results"] == 0 and not report["holds_job"], report
        np.testing.assert_array_equal(got["int32"], int_sum)
        # float32: the reference's bits exactly (so the same on every rank), within the quantizer's bound.
        np.testing.assert_array_equal(got["float32"].view(np.uint32), fixed.view(np.uint32))
        assert np.all(np.abs(got["float32"].astype(np.float64) - exact) <= bound)
        # Non-finite in one rank's block: that whole block NaN on every rank, every other block summed.
        nan_blocks = {worker.NAN_AT // LANES, worker.INF_AT // LANES}
        for b in range(-(-worker.SPECIAL_COUNT // LANES)):
            block = got["special"][b * LANES : (b + 1) * LANES]
            assert np.isnan(block).all() if b in nan_blocks else (block == 10.0).all(), (rank, b, block[:4])
        np.testing.assert_array_equal(got["special"].view(np.uint32), special_fixed.view(np.uint32))
        np.testing.assert_array_equal(got["avg"], np.full(300, 2.5, np.float32))
        np.testing.assert_array_equal(got["avg_int32"], np.full(5, (3 + 13 + 23 + 33) // 4, np.int32))
        np.testing.assert_array_equal(got["leaf"], np.full(50, 8.0, np.float32))
        np.testing.assert_array_equal(got["async"], np.full(700, 4.0, np.float32))
        # float16/bfloat16 through float32 staging: the same bits on every rank, close to the sum.
        for name, tol in (("torch.float16", 2**-10), ("torch.bfloat16", 2**-7)):
            np.testing.assert_array_equal(got[name].view(np.uint32), first[name].view(np.uint32))
            reference = np.sum([torch.tensor(h).to(getattr(torch, name[6:])).double().numpy() for h in halves], 0)
            assert np.all(np.abs(got[name] - reference) <= tol * (np.abs(reference) + 4 * 100)), name
        # DDP's gradient sums are the same bits on every rank, so its replicas stay identical.
        np.testing.assert_array_equal(got["ddp"].view(np.uint32), first["ddp"].view(np.uint32))
        assert not np.array_equal(got["ddp"], worker.parameters(worker.ddp_model())), "DDP did not train"
        # Collectives BML does not serve are gloo's, as before.
        assert got["max"].tolist() == [3.0]
        np.testing.assert_array_equal(got["float64"], np.full(3, 7.0))


def test_a_rank_whose_card_is_missing_makes_every_rank_fail_fast_naming_it(ranks: Ranks) -> None:
    missing = f"host 1: no interface has the level-1 card address {MISSING_CARD} (is that card missing?)"
    for rank, report in enumerate(ranks.reports):
        first, after = report["card_missing"]["first"], report["card_missing"]["after"]
        assert first["error"] == "DistBackendError" and missing in first["message"], (rank, first)
        if rank != 1:
            assert "rank 1 cannot listen on its cards" in first["message"], first
        assert first["after"] < FAST, f"rank {rank} failed only after {first['after']:.1f} s"
        assert after["error"] == "DistBackendError" and "unusable" in after["message"], (rank, after)
