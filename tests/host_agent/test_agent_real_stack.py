"""The host agent against the real software switch (UDP mode) and controller, each a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from agent_harness import WAIT, assert_close_to_reference, run_ranks

from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentInputError,
    AllReduceTimeout,
    CollectiveAbortedError,
    CollectiveMismatchError,
)
from netagg.local import LocalStack as Stack

pytestmark = pytest.mark.loopback

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def lossy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("lossy"), ingress_loss=0.1, egress_loss=0.1)
    try:
        yield s.start()
    finally:
        s.stop()


def _inputs(n: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [
            (rng.standard_normal(50000) * (r + 1)).astype(np.float32),
            rng.integers(-1000, 1000, size=3000, dtype=np.int32),
            rng.standard_normal(3).astype(np.float32),
        ]
        for r in range(n)
    ]


def _run(stack: Stack, job: str, inputs: list[list[np.ndarray]], **options: object) -> list[list[np.ndarray]]:
    n = len(inputs)
    controller = stack.controller()

    def body(rank: int, _: object) -> list[np.ndarray]:
        with AllReduceClient.join(
            controller, job, n, rank, join_timeout=30, deadline=20, **options
        ) as client:
            futures = [client.allreduce_async(x, inplace=False) for x in inputs[rank]]
            return [f.result(WAIT) for f in futures]

    return run_ranks([None] * n, body)  # type: ignore[list-item]


@pytest.mark.parametrize("num_workers", [1, 2, 4, 8])
def test_sums_through_the_software_switch(stack: Stack, num_workers: int) -> None:
    inputs = _inputs(num_workers, seed=num_workers)
    results = _run(stack, f"sum-{num_workers}", inputs)
    for r in range(num_workers):
        assert_close_to_reference(results[r][0], [x[0] for x in inputs], 256)
        np.testing.assert_array_equal(results[r][1], np.sum([x[1] for x in inputs], axis=0, dtype=np.int32))
        np.testing.assert_array_equal(results[r][0], results[0][0])


def test_loss_at_the_switch_and_the_agent_gives_identical_bits(stack: Stack, lossy_stack: Stack) -> None:
    inputs = _inputs(3, seed=21)
    lossless = _run(stack, "lossless", inputs)
    lossy = _run(lossy_stack, "lossy", inputs, loss=0.01, loss_seed=3)
    for r in range(3):
        for got, want in zip(lossy[r], lossless[r]):
            np.testing.assert_array_equal(got, want)
    drops = lossy_stack.controller().stats()["switch"]["drops"]
    assert drops["simulated_loss"]["packets"] > 0


def test_mixed_stream_queued_and_sequential(stack: Stack) -> None:
    """Batches queued at once, each batch after the previous completed: both ends of the exponent chain."""
    n = 3
    rng = np.random.default_rng(8)
    sizes = [(1, "float32"), (700, "int32"), (4000, "float32"), (257, "float16"), (20000, "float32")]
    batches = [sizes[:2], sizes[2:], sizes]
    inputs = [
        [[rng.standard_normal(c).astype(d) if d != "int32" else rng.integers(-9, 9, c, np.int32) for c, d in b]
         for b in batches]
        for _ in range(n)
    ]  # fmt: skip
    controller = stack.controller()

    def body(rank: int, _: object) -> list[list[np.ndarray]]:
        with AllReduceClient.join(
            controller, "mixed", n, rank, join_timeout=30, deadline=20, window=8
        ) as client:
            out = []
            for batch in inputs[rank]:
                futures = [client.allreduce_async(x, inplace=False) for x in batch]
                out.append([f.result(WAIT) for f in futures])
            return out

    results = run_ranks([None] * n, body)  # type: ignore[list-item]
    for b, batch in enumerate(batches):
        for t, (_, dtype) in enumerate(batch):
            per_rank = [inputs[r][b][t] for r in range(n)]
            got = results[0][b][t]
            for r in range(n):
                np.testing.assert_array_equal(results[r][b][t], got)
            if dtype == "int32":
                np.testing.assert_array_equal(got, np.sum(per_rank, axis=0, dtype=np.int32))
            elif dtype == "float32":
                assert_close_to_reference(got, per_rank, 256)


def test_stopped_worker_fails_the_other_within_its_deadline(stack: Stack) -> None:
    controller = stack.controller()

    def body(rank: int, _: object) -> str:
        with AllReduceClient.join(controller, "stopping", 2, rank, join_timeout=30, deadline=1.0) as client:
            client.allreduce(np.ones(1000, np.float32))
            if rank == 1:
                return "stopped"
            with pytest.raises(AllReduceTimeout) as info:
                client.allreduce(np.ones(1000, np.float32))
            return str(info.value)

    message = run_ranks([None, None], body)[0]  # type: ignore[list-item]
    assert "job 'stopping'" in message and "rank 0" in message and "still missing" in message


def test_mismatched_all_reduces_and_a_given_up_one_fail_every_rank_fast(stack: Stack) -> None:
    """The switch flags MISMATCH and ORs ABORT: every rank fails within a round trip, not at its deadline, and the
    job cannot be used afterwards; int32 sums that fit come back alike on every rank."""
    controller = stack.controller()
    deadline = 30.0

    def failure(fn: Any) -> tuple[BaseException | None, float]:
        start = time.monotonic()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - inspected below
            return exc, time.monotonic() - start
        return None, time.monotonic() - start

    def body(rank: int, _: object) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with AllReduceClient.join(controller, "wide", 2, rank, join_timeout=30, deadline=deadline) as client:
            out["int32"] = client.allreduce(np.array([2**30 + 5 if rank == 0 else 1], np.int32)).tolist()
        with AllReduceClient.join(controller, "mismatch", 2, rank, join_timeout=30, deadline=deadline) as client:
            out["mismatch"] = failure(lambda: client.allreduce(np.ones(1000 * (rank + 1), np.float32)))
            out["mismatch_next"] = failure(lambda: client.allreduce(np.ones(10, np.float32)))
        with AllReduceClient.join(controller, "abort", 2, rank, join_timeout=30, deadline=deadline) as client:
            bad = np.ones(100, np.int64 if rank == 0 else np.float32)
            out["abort"] = failure(lambda: client.allreduce(bad))
            out["abort_next"] = failure(lambda: client.allreduce(np.ones(10, np.float32)))
        return out

    results = run_ranks([None, None], body)  # type: ignore[list-item]
    for rank, r in enumerate(results):
        assert r["int32"] == [2**30 + 6]
        error, took = r["mismatch"]
        assert isinstance(error, CollectiveMismatchError) and f"{1000 * (rank + 1)} float32" in str(error), error
        assert took < deadline / 3, f"rank {rank} learnt of the mismatch after {took:.1f} s"
        assert isinstance(r["mismatch_next"][0], AgentBrokenError)
        assert isinstance(r["abort_next"][0], AgentBrokenError)
    assert isinstance(results[0]["abort"][0], AgentInputError)
    error, took = results[1]["abort"]
    assert isinstance(error, CollectiveAbortedError) and took < deadline / 3, (error, took)


def test_cli_runs_checks_and_reports_goodput(stack: Stack) -> None:
    argv = [sys.executable, "-m", "netagg.host_agent.cli", "--controller", stack.api, "--job", "cli",
            "--world-size", "2", "--size", "100000", "--iterations", "2", "--check", "--json", "--loss", "0.01",
            "--deadline", "20", "--join-timeout", "30"]  # fmt: skip
    procs = [
        subprocess.Popen([*argv, "--rank", str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for rank in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out))
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["check"]["ok"] and report["goodput_MBps"] > 0
    assert reports[0]["digest"] == reports[1]["digest"]
