"""One rank of torch's own distributed tests (torch.testing._internal.distributed.distributed_test), run in a row.

    python peer_rank.py OUT_JSON TEST_NAME...   (with BACKEND, RANK, WORLD_SIZE, TEMP_DIR and NETAGG_* set)

torch runs each test of its ``DistributedTest._DistTestBase`` in fresh rank processes (``TestDistBackend._run``:
init_process_group, barrier, the test, barrier, destroy_process_group). This does the same steps, each test in a
process forked from this one, so torch and the suite are imported once per rank instead of once per test and rank,
and each test still starts from a clean process (tests leave state behind that can crash the next one). Before
importing the suite it adds "netagg" to torch's backend feature sets wherever gloo is, so the tests that torch
gates on those sets run for netagg as they do for gloo (tests gated on the name "gloo" itself stay skipped).

For BACKEND=netagg it then checks every dtype and reduce op of all_reduce against an internal gloo group in the same
run (torch's ``_test_all_reduce_helper`` compares with expected values only for some dtypes and ops).

Each test's outcome (passed, skipped with the reason, failed with the traceback) is written to OUT_JSON as soon as
it is known, so a rank that hangs still leaves the outcomes before the test it hangs in.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
import unittest
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import netagg.host_agent.torch_backend  # noqa: F401  (registers "netagg")

BACKEND = os.environ["BACKEND"]
#: Seconds a collective may take before the group gives up (torch's tests use 300; the smaller, the sooner a
#: broken test shows instead of holding the run).
PG_TIMEOUT = timedelta(seconds=float(os.environ.get("PEER_PG_TIMEOUT", "60")))
#: Seconds one test may take on a rank before its process is killed (and the test failed).
TEST_TIMEOUT = 2 * PG_TIMEOUT.total_seconds() + 60


def _add_netagg_where_gloo_is() -> None:
    from torch.testing._internal.common_distributed import DistTestCases

    for backends in DistTestCases.backend_feature.values():
        if "gloo" in backends:
            backends.add("netagg")


_add_netagg_where_gloo_is()
from torch.testing._internal.common_distributed import TEST_SKIPS  # noqa: E402 - after the feature sets
from torch.testing._internal.common_utils import SEED, set_rng_seed  # noqa: E402
from torch.testing._internal.distributed import distributed_test as dt  # noqa: E402

_SKIP_CODES = {skip.exit_code: skip.message for skip in TEST_SKIPS.values()}


#: Tests whose bodies take their CPU path only `if BACKEND == "gloo"` (else they fail with an unbound local).
GLOO_BY_NAME = {
    "test_accumulate_gradients_no_sync",
    "test_accumulate_gradients_no_sync_grad_is_view",
    "test_accumulate_gradients_no_sync_allreduce_hook",
    "test_accumulate_gradients_no_sync_allreduce_with_then_hook",
}


class PeerTest(dt.TestDistBackend, dt.DistributedTest._DistTestBase):
    """torch's test base, as torch's test_distributed_spawn.py composes it."""


def run_one(name: str, rank: int) -> dict[str, Any]:
    if name in GLOO_BY_NAME:
        # The test's CPU path is taken for BACKEND == "gloo" by name only: take it with the netagg default group.
        dt.BACKEND = "gloo"
    test = PeerTest(name)
    test.rank = rank
    set_rng_seed(SEED)  # as torch's TestCase.setUp: every rank draws the same "global" batch
    test.file_name = os.path.join(os.environ["TEMP_DIR"], "init_dir", "store")
    start = time.monotonic()
    try:
        dist.init_process_group(
            init_method=test.init_method,
            backend=BACKEND,
            world_size=int(test.world_size),
            rank=rank,
            timeout=PG_TIMEOUT,
        )
        try:
            if dist.get_backend() != BACKEND:
                raise AssertionError(f"the default group runs {dist.get_backend()}, not {BACKEND}")
            test._barrier(timeout=120)
            getattr(test, name)()
            test._barrier(timeout=120)
        finally:
            dist.destroy_process_group()
    except unittest.SkipTest as exc:
        return {"outcome": "skipped", "reason": str(exc), "seconds": time.monotonic() - start}
    except SystemExit as exc:  # torch's rank-side skips exit with a code of TEST_SKIPS
        if exc.code in _SKIP_CODES:
            return {"outcome": "skipped", "reason": _SKIP_CODES[exc.code], "seconds": time.monotonic() - start}
        return {"outcome": "failed", "error": f"exit {exc.code}", "seconds": time.monotonic() - start}
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        return {
            "outcome": "failed",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
            "seconds": time.monotonic() - start,
        }
    return {"outcome": "passed", "seconds": time.monotonic() - start}


# --- value checks: every dtype and op of all_reduce against gloo in the same run --------------------------------

CHECK_DTYPES = (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.int8,
    torch.uint8, torch.bool, torch.complex64,
)  # fmt: skip
CHECK_OPS = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR")


def _values(dtype: torch.dtype, rank: int, world: int, n: int = 1000) -> torch.Tensor:
    """Deterministic per-rank values of ``dtype`` whose SUM and PRODUCT over ``world`` ranks stay representable."""
    g = torch.Generator().manual_seed(1000 + rank)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(n, generator=g, dtype=dtype)
    if dtype.is_floating_point:
        return (torch.randn(n, generator=g, dtype=torch.float64) * 3.0).to(dtype)
    if dtype == torch.uint8:
        return torch.randint(0, 4, (n,), generator=g, dtype=dtype)
    if dtype == torch.int32:  # int32 goes through the switch: use its whole range
        return torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=dtype)
    return torch.randint(-3, 4, (n,), generator=g, dtype=dtype)


def _agrees(ours: torch.Tensor, theirs: torch.Tensor, peaks: torch.Tensor, world: int) -> tuple[bool, str]:
    if ours.dtype != theirs.dtype or ours.shape != theirs.shape:
        return False, f"{ours.dtype}{tuple(ours.shape)} vs gloo's {theirs.dtype}{tuple(theirs.shape)}"
    if torch.equal(ours, theirs):
        return True, "equal"
    if not ours.dtype.is_floating_point:
        return False, f"{int((ours != theirs).sum())} elements differ"
    # A switch sum: the quantizer's bound (docs/quantization.md: world * 2**(E + k - 31) per block, E <= the largest
    # exponent of any rank's inputs), plus the rounding of both results to the caller's dtype and gloo's own
    # rounding of `world` additions in that dtype.
    eps = torch.finfo(ours.dtype).eps
    e = int(torch.frexp(peaks.double()).exponent.max())
    bound = world * 2.0 ** (e + (world - 1).bit_length() - 31) + (world + 1) * eps * (theirs.double().abs() + 1e-30)
    bound = bound + (world - 1) * eps * peaks.double().max()
    excess = ((ours.double() - theirs.double()).abs() - bound).max().item()
    return excess <= 0, f"off by up to {excess:.3g} beyond the bound"


def check_values(rank: int, world: int) -> dict[str, Any]:
    """all_reduce of every dtype and op on the netagg group vs an internal gloo group: same outcome, same values."""
    dist.init_process_group(
        init_method="file://" + os.path.join(os.environ["TEMP_DIR"], "init_dir", "store"),
        backend=BACKEND, world_size=world, rank=rank, timeout=PG_TIMEOUT,
    )  # fmt: skip
    gloo = dist.new_group(backend="gloo")
    out: dict[str, Any] = {}
    try:
        for dtype in CHECK_DTYPES:
            for name in CHECK_OPS:
                op = getattr(dist.ReduceOp, name)
                local = _values(dtype, rank, world)
                ours, theirs = local.clone(), local.clone()
                outcome: list[str] = []
                for tensor, group in ((ours, None), (theirs, gloo)):
                    try:
                        dist.all_reduce(tensor, op=op, group=group)
                        outcome.append("ok")
                    except Exception as exc:  # noqa: BLE001 - compared between the two groups
                        outcome.append(type(exc).__name__)
                key = f"{dtype} {name}"
                if name == "AVG" and outcome[0] == "ok" and outcome[1] != "ok":
                    # gloo has no AVG; netagg's (through the switch) must equal gloo's SUM divided by world.
                    theirs = local.clone()
                    dist.all_reduce(theirs, group=gloo)
                    theirs = theirs / world if theirs.is_floating_point() else theirs // world
                    outcome[1] = "ok"
                if outcome[0] != outcome[1]:
                    out[key] = [False, f"netagg: {outcome[0]}, gloo: {outcome[1]}"]
                elif outcome[0] != "ok":
                    out[key] = [True, f"both raise {outcome[0]}"]
                else:
                    if local.is_complex():  # torch all-reduces a complex tensor as its real view (floats)
                        local, ours, theirs = (torch.view_as_real(t) for t in (local, ours, theirs))
                    peaks = local.abs().max().reshape(1).double() if local.is_floating_point() else local
                    if local.is_floating_point():
                        dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=gloo)
                    out[key] = list(_agrees(ours, theirs, peaks, world))
    finally:
        dist.destroy_process_group()
    return out


def main() -> int:
    out_path, names = sys.argv[1], sys.argv[2:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    report: dict[str, Any] = {"backend": BACKEND, "world": world, "tests": {}}

    def save() -> None:
        with open(out_path + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(out_path + ".tmp", out_path)

    base = os.environ["TEMP_DIR"]
    for index, name in enumerate(names):
        report["running"] = name
        save()
        report["tests"][name] = _forked(lambda n=name: run_one(n, rank), os.path.join(base, f"test-{index}"))
    report["running"] = None
    if BACKEND == "netagg":
        report["running"] = "value checks"
        save()
        values = _forked(lambda: {"values": check_values(rank, world)}, os.path.join(base, "values"))
        report["values"] = values.get("values", {"did not finish": [False, str(values)]})
        report["running"] = None
    save()
    return 0


def _forked(fn: Any, temp: str) -> dict[str, Any]:
    """``fn()`` (a JSON-able dict) run in a forked child whose TEMP_DIR is ``temp`` (fresh barrier files)."""
    for sub in ("barrier", "test_dir", "init_dir"):
        os.makedirs(os.path.join(temp, sub), exist_ok=True)
    result = os.path.join(temp, f"result-{os.environ['RANK']}.json")

    def child() -> None:
        os.environ["TEMP_DIR"] = temp
        outcome = fn()
        with open(result + ".tmp", "w") as f:
            json.dump(outcome, f)
        os.replace(result + ".tmp", result)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(TEST_TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"outcome": "failed", "error": f"did not finish within {TEST_TIMEOUT:g} s"}
    if not os.path.exists(result):
        return {"outcome": "failed", "error": f"the test's process exited with {proc.exitcode}"}
    with open(result) as f:
        return json.load(f)


if __name__ == "__main__":
    sys.exit(main())
