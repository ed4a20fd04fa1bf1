"""The torch ProcessGroup over the fake switch, ranks as threads: mismatched calls fail on every rank, named.

Each rank is a ``NetaggProcessGroup`` built directly (no ``init_process_group``, so several fit in one process) on
one in-process store, joined through the fake switch's job API. What is tested is the shim's part: the descriptor
it passes (the group's own count of every collective, numel, dtype), the reports it exchanges through the store
when a collective fails, and the torch errors it raises. tests/torch_backend runs the same cases as processes
against the real switch and controller.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from agent_harness import run_ranks

from netagg.host_agent.errors import AgentInputError

pytestmark = pytest.mark.loopback

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
from torch_groups import DEADLINE, FAST, groups, summed, timed  # noqa: E402

from netagg.host_agent.torch_backend import NetaggProcessGroup  # noqa: E402 - needs torch


def _assert_unusable(pgs: list[NetaggProcessGroup], since: str) -> None:
    outcomes, _ = timed(pgs, lambda r, pg: summed(pg, torch.ones(10)))
    for rank, out in enumerate(outcomes):
        assert isinstance(out, dist.DistBackendError), f"rank {rank} returned {out!r} from an unusable group"
        assert "the group is unusable since an earlier all-reduce failed" in str(out) and since in str(out)


@pytest.mark.parametrize("counts", [(100, 200), (1000, 2000)])
def test_different_numel_fails_on_every_rank_naming_both(counts: tuple[int, int]) -> None:
    with groups(2) as (_, pgs, _store):
        # A gloo-served collective first: it takes a number too, so the switch all-reduce is the group's #1.
        maxima = run_ranks(pgs, lambda r, pg: summed(pg, torch.tensor([float(r)]), dist.ReduceOp.MAX).item())
        assert maxima == [1.0, 1.0]
        outcomes, elapsed = timed(pgs, lambda r, pg: summed(pg, torch.full((counts[r],), r + 1.0)))
        assert elapsed < FAST, f"took {elapsed:.1f} s (deadline {DEADLINE} s)"
        named = (
            f"all_reduce #1 of group 'test-job': rank 0 has {counts[0]} float32 elements, "
            f"rank 1 has {counts[1]} float32 elements"
        )
        for rank, out in enumerate(outcomes):
            assert isinstance(out, dist.DistBackendError), f"rank {rank}: {out!r}"
            assert named in str(out) and f"rank {rank}" in str(out)
        _assert_unusable(pgs, named)


def test_int32_sum_equals_glooss_and_the_group_goes_on() -> None:
    with groups(2) as (_, pgs, store):
        values = [2**30 + 5, 1]
        sums = run_ranks(pgs, lambda r, pg: summed(pg, torch.tensor([values[r]], dtype=torch.int32)).tolist())
        assert sums == [[1073741830], [1073741830]]

        def gloo(rank: int, _: object) -> list[int]:
            group = dist.ProcessGroupGloo(dist.PrefixStore("reference", store), rank, 2, timedelta(seconds=60))
            t = torch.tensor([values[rank]], dtype=torch.int32)
            group.allreduce([t]).wait()
            return t.tolist()

        assert run_ranks(pgs, gloo) == sums  # type: ignore[arg-type]
        after = run_ranks(pgs, lambda r, pg: summed(pg, torch.ones(1)).tolist())
        assert after == [[2.0], [2.0]]


def test_bad_input_on_one_rank_fails_the_others_fast_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The backend routes to the switch only tensors the agent takes (a leaf that requires grad included), so the
    # agent's staging is made to refuse rank 0's tensor, found by its storage.
    from netagg.host_agent import client

    refused: list[int] = []
    original = client.stage

    def stage(x: Any, *args: Any, **kwargs: Any) -> Any:
        if x.data_ptr() in refused:
            raise AgentInputError("refused by the test: this rank's tensor is unusable")
        return original(x, *args, **kwargs)

    monkeypatch.setattr(client, "stage", stage)

    def body(rank: int, pg: NetaggProcessGroup) -> Any:
        tensor = torch.ones(100)
        if rank == 0:
            refused.append(tensor.data_ptr())
        return summed(pg, tensor)

    with groups(2) as (_, pgs, _store):
        outcomes, elapsed = timed(pgs, body)
        local, peer = outcomes
        assert isinstance(local, AgentInputError) and "refused by the test" in str(local), local
        assert isinstance(peer, dist.DistBackendError), peer
        assert elapsed < FAST, f"rank 1 learnt of rank 0's error after {elapsed:.1f} s (deadline {DEADLINE} s)"
        text = str(peer)
        assert re.search(r"all_reduce #0 of group 'test-job': rank 0 gave up on it: refused by the test: this "
                         r"rank's tensor is unusable.*, rank 1 has 100 float32 elements", text), text  # fmt: skip
        _assert_unusable(pgs, "rank 0 gave up on it")
