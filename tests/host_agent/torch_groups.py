"""Ranks' torch process groups as threads of one process, on one fake switch (tests/host_agent's torch tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from agent_harness import run_ranks
from fake_agg_switch import FakeController, FakeSwitch

from netagg.host_agent.torch_backend import NetaggOptions, NetaggProcessGroup

DEADLINE = 30.0
FAST = 10.0  # a failure must come long before the deadline


@contextmanager
def groups(n: int, *per_rank: dict[str, Any]) -> Iterator[tuple[FakeSwitch, list[NetaggProcessGroup], dist.Store]]:
    """``n`` ranks' groups on one fake switch; ``per_rank[r]`` adds NetaggOptions fields for rank r."""
    switch = FakeSwitch(n)
    with switch:
        controller = FakeController(switch)
        store = dist.HashStore()

        def make(rank: int, _: object) -> NetaggProcessGroup:
            extra = per_rank[rank] if rank < len(per_rank) else {}
            options = NetaggOptions(controller=controller, job=switch.job, deadline=DEADLINE, **extra)
            return NetaggProcessGroup(store, rank, n, timedelta(seconds=60), options)

        pgs = run_ranks([None] * n, make)  # type: ignore[list-item]
        try:
            yield switch, pgs, store
        finally:
            for pg in pgs:
                pg.shutdown()


def summed(pg: NetaggProcessGroup, tensor: Any, op: Any = None) -> Any:
    opts = dist.AllreduceOptions()
    if op is not None:
        opts.reduceOp = op
    pg.allreduce([tensor], opts).wait()
    return tensor


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def timed(pgs: list[NetaggProcessGroup], body: Callable[[int, NetaggProcessGroup], Any]) -> tuple[list[Any], float]:
    start = time.monotonic()
    outcomes = run_ranks(pgs, lambda r, pg: outcome(lambda: body(r, pg)))  # type: ignore[arg-type]
    return outcomes, time.monotonic() - start
