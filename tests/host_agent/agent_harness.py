"""Runs a job of several AllReduceClients (threads of this process) against a FakeSwitch, and the references."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from fake_agg_switch import FakeController, FakeSwitch

from netagg.host_agent import quantize as q
from netagg.host_agent.client import AllReduceClient

#: Every wait in these tests is bounded by this (seconds); the agent's own deadlines are shorter.
WAIT = 60.0


@contextmanager
def job(
    num_workers: int,
    switch: FakeSwitch | None = None,
    datapaths: Sequence[str] | None = None,
    **client_options: Any,
) -> Iterator[tuple[FakeSwitch, list[AllReduceClient]]]:
    """A started FakeSwitch and one joined client per rank; everything is closed on exit.

    ``datapaths``: each rank's transport data path ("native", "python"); default: the environment's.
    """
    switch = switch or FakeSwitch(num_workers)
    client_options.setdefault("deadline", 10.0)
    with switch:
        controller = FakeController(switch)
        clients: list[AllReduceClient] = []
        try:
            for rank in range(num_workers):
                options = dict(client_options)
                if datapaths is not None:
                    options["datapath"] = datapaths[rank]
                clients.append(AllReduceClient.join(controller, switch.job, num_workers, rank, **options))
            yield switch, clients
        finally:
            for client in clients:
                client.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, f"{what} did not happen within {timeout} s"
        time.sleep(0.002)


def run_ranks(clients: Sequence[AllReduceClient], body: Callable[[int, AllReduceClient], Any]) -> list[Any]:
    """Run ``body(rank, client)`` on one thread per rank; return the values in rank order, re-raising errors."""
    results: list[Any] = [None] * len(clients)
    errors: list[BaseException | None] = [None] * len(clients)

    def main(rank: int) -> None:
        try:
            results[rank] = body(rank, clients[rank])
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors[rank] = exc

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        if t.is_alive():
            raise TimeoutError(f"a rank did not finish within {WAIT} s")
    for err in errors:
        if err is not None:
            raise err
    return results


def allreduce_all(
    clients: Sequence[AllReduceClient], inputs: Sequence[Sequence[np.ndarray]]
) -> list[list[np.ndarray]]:
    """Every rank queues all of its tensors at once (async), then waits; returns new arrays per rank."""

    def body(rank: int, client: AllReduceClient) -> list[np.ndarray]:
        futures = [client.allreduce_async(x, inplace=False) for x in inputs[rank]]
        return [f.result(WAIT) for f in futures]

    return run_ranks(clients, body)


def float_reference(per_rank: Sequence[np.ndarray], lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 sum of the float32 values, and the quantizer's per-element error bound for it."""
    n = len(per_rank)
    flat = [np.asarray(x, dtype=np.float32).reshape(-1) for x in per_rank]
    count = flat[0].size
    m = -(-count // lanes)
    blocks = np.zeros((n, m * lanes), dtype=np.float32)
    for i, x in enumerate(flat):
        blocks[i, :count] = x
    blocks = blocks.reshape(n, m, lanes)
    shared = np.max([q.block_exponents(b)[0].astype(np.int16) for b in blocks], axis=0) if m else np.zeros(0)
    exact = blocks.astype(np.float64).sum(axis=0)
    bound = q.error_bound(exact, shared, n)
    return exact.reshape(-1)[:count], bound.reshape(-1)[:count]


def assert_close_to_reference(result: np.ndarray, per_rank: Sequence[np.ndarray], lanes: int) -> None:
    exact, bound = float_reference(per_rank, lanes)
    err = np.abs(result.reshape(-1).astype(np.float64) - exact)
    worst = int(np.argmax(err - bound)) if err.size else 0
    assert np.all(err <= bound), f"element {worst}: error {err[worst]} exceeds the bound {bound[worst]}"
