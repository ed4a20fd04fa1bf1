"""A switch restart during a job: the agent learns of it from the controller and fails fast, not at its deadline.

A restarted switch lost its registers, so a round some workers had already finished can never complete. The
controller re-pushes the pipeline and reports a new switch generation in its heartbeat answers; every in-flight
and later all-reduce of the job then fails with SwitchRestartedError. The switch and the controller are child
processes (netagg.local.LocalStack); the switch is killed and restarted by PID.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.errors import AgentBrokenError, SwitchRestartedError
from netagg.local import LocalStack

pytestmark = pytest.mark.loopback

#: The agents' all-reduce deadline: "fast" means well before it.
DEADLINE = 30.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path / "stack").start() as running:
        yield running


def join_two(stack: LocalStack, job: str) -> list[AllReduceClient]:
    controller = stack.controller()
    clients: list[AllReduceClient | BaseException] = [RuntimeError("not joined")] * 2

    def join(rank: int) -> None:
        try:
            clients[rank] = AllReduceClient.join(controller, job, 2, rank, join_timeout=30, deadline=DEADLINE)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            clients[rank] = exc

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(c, AllReduceClient) for c in clients), clients
    return clients  # type: ignore[return-value]


def wait_for_new_generation(stack: LocalStack, job: str, joined: int) -> None:
    """Poll the controller (as rank 0 would) until it has programmed the restarted switch."""
    client = stack.controller(timeout=5)
    deadline = time.monotonic() + 60
    tick = threading.Event()
    while True:
        try:
            if client.heartbeat(job, 0)["switch_generation"] != joined:
                return
        except Exception:  # noqa: BLE001 - the controller may be busy reconnecting
            pass
        assert time.monotonic() < deadline, f"the controller did not reprogram the switch:\n{stack.logs()}"
        tick.wait(0.1)


def wait_until_told(client: AllReduceClient, within: float = 10.0) -> None:
    """Wait until the client's heartbeat brought the news of the restart (it is then broken for good)."""
    deadline = time.monotonic() + within
    tick = threading.Event()
    while not isinstance(client._broken, SwitchRestartedError):  # the client's own failure state
        assert time.monotonic() < deadline, f"rank {client.session.rank} was not told of the restart"
        tick.wait(0.05)


def assert_switch_restarted(future: Future, within: float) -> None:
    with pytest.raises(SwitchRestartedError, match="the switch restarted during job .*Leave and join again") as info:
        future.result(within)
    assert isinstance(info.value, AgentBrokenError)  # the client is unusable afterwards, like after a timeout


def test_an_all_reduce_in_flight_at_a_restart_fails_fast(stack: LocalStack) -> None:
    clients = join_two(stack, "inflight")
    try:
        x = np.ones(4096, dtype=np.float32)
        # Rank 0 starts an all-reduce rank 1 has not issued: its round stays open, rank 0 retransmits.
        started = time.monotonic()
        pending = clients[0].allreduce_async(x.copy())
        joined = clients[0].session.switch_generation
        assert joined is not None
        stack.restart_switch()
        assert_switch_restarted(pending, DEADLINE)
        assert time.monotonic() - started < DEADLINE / 2, "failed at its deadline, not on the restart"
        # The other rank learned it too: its next all-reduce fails at once instead of stalling.
        wait_for_new_generation(stack, "inflight", joined)
        wait_until_told(clients[1])
        late = time.monotonic()
        with pytest.raises(SwitchRestartedError):
            clients[1].allreduce(x.copy())
        assert time.monotonic() - late < 1.0
    finally:
        for c in clients:
            c.close()


def test_the_next_all_reduce_after_a_restart_between_all_reduces_fails_fast(stack: LocalStack) -> None:
    clients = join_two(stack, "between")
    try:
        x = np.arange(1000, dtype=np.int32)
        futures = [c.allreduce_async(x.copy(), inplace=False) for c in clients]
        for f in futures:
            np.testing.assert_array_equal(f.result(DEADLINE), 2 * x)
        joined = clients[0].session.switch_generation
        stack.restart_switch()
        wait_for_new_generation(stack, "between", joined)
        # Within a heartbeat interval (a quarter of the lease, at most 1 s) of the controller reprogramming the
        # switch, each agent knows; from then on an all-reduce fails at once instead of waiting for its deadline.
        for c in clients:
            wait_until_told(c, within=5.0)
        started = time.monotonic()
        for c in clients:
            with pytest.raises(SwitchRestartedError, match="switch generation .* at the join, now"):
                c.allreduce(x.copy())
        assert time.monotonic() - started < 1.0
    finally:
        for c in clients:
            c.close()
