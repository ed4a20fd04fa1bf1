"""Two ranks whose all_reduce calls differ, through the real switch and controller: every rank fails, fast.

The cases as a user met them before every chunk carried its collective's identity: 100 vs 200 elements (both ranks
returned, rank 1 kept its own values in elements 100-199), 1000 vs 2000 (rank 0 returned, rank 1 failed after 30 s,
and rank 0's next, matched all_reduce returned 102.0 instead of 300.0), int32 2**30 + 5 plus 1 (rank 0 refused it,
rank 1 returned 268435457, and rank 0's next float32 all_reduce returned 1.0), and a tensor one rank's agent refuses
(every tensor the backend routes to the switch is one the agent takes, so the refusal is injected into its staging).
"""

from __future__ import annotations

import re

import pytest
from torch_harness import run_ranks

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")

#: The agent's deadline in these runs: every failure must come long before it.
DEADLINE = 30.0
FAST = 10.0


@pytest.mark.parametrize(
    "scenario, counts", [("mismatch_small", (100, 200)), ("mismatch_large", (1000, 2000))]
)
def test_different_numel_fails_on_both_ranks_naming_both_sides(stack, tmp_path, scenario, counts) -> None:
    results = run_ranks(stack, tmp_path, scenario, 2, deadline=DEADLINE)
    named = re.compile(
        rf"all_reduce #\d+ of group '[^']+': rank 0 has {counts[0]} float32 elements, "
        rf"rank 1 has {counts[1]} float32 elements"
    )
    for rank, r in enumerate(results):
        first, after = r["first"], r["after"]
        assert first["error"] == "DistBackendError", (rank, first)
        assert named.search(first["message"]), first["message"]
        assert first["after"] < FAST, f"rank {rank} failed only after {first['after']:.1f} s"
        # The next, matched all_reduce raises instead of returning a sum of misaligned chunks.
        assert after["error"] == "DistBackendError", (rank, after)
        assert "unusable" in after["message"] and named.search(after["message"]), after["message"]


def test_int32_sum_that_fits_is_returned_on_both_ranks_as_gloo_does(stack, tmp_path) -> None:
    for r in run_ranks(stack, tmp_path, "int32_wide", 2, deadline=DEADLINE):
        assert r["netagg"] == r["gloo"] == 2**30 + 6, r
        assert r["after"] == 2.0, r  # the stream stayed in step


def test_bad_input_on_one_rank_fails_both_fast(stack, tmp_path) -> None:
    local, peer = run_ranks(stack, tmp_path, "bad_input", 2, deadline=DEADLINE)
    # AgentInputError is a ValueError: torch's caller gets the error of a bad argument.
    assert local["first"]["error"] == "AgentInputError" and "refused by the test" in local["first"]["message"], local
    assert peer["first"]["error"] == "DistBackendError", peer
    assert re.search(
        r"all_reduce #\d+ of group '[^']+': rank 0 gave up on it: refused by the test: this rank's tensor is "
        r"unusable.*, rank 1 has 100 float32 elements",
        peer["first"]["message"],
    ), peer["first"]["message"]
    assert peer["first"]["after"] < FAST, f"rank 1 failed only after {peer['first']['after']:.1f} s"
    for r in (local, peer):
        assert r["after"]["error"] == "DistBackendError" and "unusable" in r["after"]["message"], r
