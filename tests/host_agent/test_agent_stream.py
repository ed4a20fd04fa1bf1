"""The exponent chain across queued all-reduces, deadlines and a stopped peer, heartbeats, torch tensors."""

from __future__ import annotations

import select
import socket
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from agent_harness import WAIT, allreduce_all, assert_close_to_reference, job, run_ranks, wait_for
from fake_agg_switch import FakeController, FakeSwitch

from netagg.constants import MsgType
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentClosedError,
    AgentError,
    AgentInputError,
    AllReduceTimeout,
)
from netagg.host_agent.session import JoinResult, SwitchEndpoint
from netagg.host_agent.transport import Transport, TransportConfig
from netagg.wire import HEADER_BYTES, LANE_DTYPE, pack_header

pytestmark = pytest.mark.loopback

LANES = 256


def _mixed_inputs(n: int, seed: int) -> list[list[np.ndarray]]:
    """Per rank: tensors of various sizes and dtypes (the same shapes on every rank), tiny to several slots."""
    rng = np.random.default_rng(seed)
    sizes = [5, 3000, 1, 700, 20000, 256, 40]
    out = []
    for r in range(n):
        tensors: list[np.ndarray] = []
        for i, size in enumerate(sizes):
            if i == 3:
                tensors.append(rng.integers(-50, 50, size=size, dtype=np.int32))
            else:
                tensors.append((rng.standard_normal(size) * 10.0 ** (i - 3) * (r + 1)).astype(np.float32))
        out.append(tensors)
    return out


def _check(results: list[list[np.ndarray]], inputs: list[list[np.ndarray]]) -> None:
    n = len(inputs)
    for t in range(len(inputs[0])):
        per_rank = [inputs[r][t] for r in range(n)]
        for r in range(n):
            if per_rank[0].dtype == np.int32:
                np.testing.assert_array_equal(results[r][t], np.sum(per_rank, axis=0, dtype=np.int32))
            else:
                assert_close_to_reference(results[r][t], per_rank, LANES)


def test_queued_back_to_back_needs_only_the_first_warm_up() -> None:
    """With every all-reduce queued before the first RESULT, each slot announces the next chunk's exponent
    in its previous round: the only warm-up rounds are the very first ones."""
    n, window = 3, 8
    inputs = _mixed_inputs(n, seed=1)
    switch = FakeSwitch(n)
    with job(n, switch, window=window) as (_, clients):
        switch.hold()
        futures = [[c.allreduce_async(x, inplace=False) for x in inputs[r]] for r, c in enumerate(clients)]
        switch.release()
        results = [[f.result(WAIT) for f in fs] for fs in futures]
        for c in clients:
            assert c.stats.warmups_sent == window
    _check(results, inputs)


def test_sequential_all_reduces_warm_up_each_time() -> None:
    """When the next all-reduce is issued only after the previous one completed, the last round on each slot
    announced "unknown", so every all-reduce starts with one warm-up round per slot it uses."""
    n, window = 2, 8
    inputs = _mixed_inputs(n, seed=2)

    def body(rank: int, client: object) -> list[np.ndarray]:
        return [client.allreduce(x, inplace=False) for x in inputs[rank]]  # type: ignore[attr-defined]

    with job(n, window=window) as (_, clients):
        results = run_ranks(clients, body)
        # int32 travels as two lanes per element
        expected = sum(min(window, -(-x.size * (2 if x.dtype == np.int32 else 1) // LANES)) for x in inputs[0])
        for c in clients:
            assert c.stats.warmups_sent == expected
    _check(results, inputs)


def test_exponent_equal_to_the_unknown_marker_is_still_exact() -> None:
    """A real block exponent of 127 (values in [2**126, 2**127)) reads as "unknown": it costs a warm-up round
    before that chunk and changes nothing else."""
    n = 2
    big = [np.full(600, 2.0**126 * 1.5, dtype=np.float32) * (1 if r == 0 else -0.5) for r in range(n)]
    inputs = [[x, x[:10].copy()] for x in big]  # 3 + 1 chunks, every one with exponent 127
    switch = FakeSwitch(n)
    with job(n, switch, window=1) as (_, clients):
        switch.hold()
        futures = [[c.allreduce_async(x, inplace=False) for x in inputs[r]] for r, c in enumerate(clients)]
        switch.release()
        results = [[f.result(WAIT) for f in fs] for fs in futures]
        for c in clients:
            assert c.stats.warmups_sent == 4  # one before each chunk, although all were queued
    _check(results, inputs)


def test_results_from_anyone_but_the_switch_are_ignored() -> None:
    switch = FakeSwitch(1)
    with job(1, switch) as (_, clients):
        switch.hold()
        future = clients[0].allreduce_async(np.ones(10, np.int32), inplace=False)
        forged = bytearray(HEADER_BYTES + 4 * switch.lanes)
        pack_header(forged, 0, msg_type=MsgType.RESULT, size=switch.size, job=switch.job_id, tsi=0, slot=0, set=0,
                    exp=0)  # fmt: skip
        np.frombuffer(forged, dtype=LANE_DTYPE, offset=HEADER_BYTES)[:] = 999
        for datagram in (bytes(forged), b"junk"):
            # The agent's socket is connected to the switch, so the kernel refuses anyone else's datagram and
            # answers ICMP port unreachable, which a connected sender sees as ConnectionRefusedError. (Had the
            # agent's socket taken it, no such answer would come and recv would time out.)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
                intruder.settimeout(WAIT)
                intruder.connect(switch.worker_address(0))
                intruder.send(datagram)
                with pytest.raises(ConnectionRefusedError):
                    intruder.recv(64)
        switch.release()
        np.testing.assert_array_equal(future.result(WAIT), np.ones(10, np.int32))


@pytest.mark.parametrize("sender", ["intruder", "switch"])
def test_datagrams_queued_before_the_transport_connects_are_counted(sender: str) -> None:
    """What reached the socket before it was connected to the switch is discarded and counted by its source."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as switch_sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder,
    ):
        sock.bind(("127.0.0.1", 0))
        switch_sock.bind(("127.0.0.1", 0))
        session = JoinResult(
            job="early", job_id=1, worker_id=0, world_size=1, lanes=LANES, slots=1, epoch=0,
            switch=SwitchEndpoint(mac="02:00:00:00:00:01", addr="127.0.0.1", port=switch_sock.getsockname()[1]),
        )  # fmt: skip
        (intruder if sender == "intruder" else switch_sock).sendto(b"junk", sock.getsockname())
        readable, _, _ = select.select([sock], [], [], WAIT)
        assert readable, "the datagram never arrived"
        transport = Transport(session, sock, TransportConfig(window=1), lambda op: None, lambda ops, exc: None)
        try:
            stats = transport.stats
            assert (stats.foreign, stats.malformed) == ((1, 0) if sender == "intruder" else (0, 1))
        finally:
            transport.close()


def test_stopped_peer_makes_the_others_fail_with_a_clear_error() -> None:
    n, deadline = 3, 1.0
    x = [np.ones(5000, np.float32) for _ in range(n)]
    with job(n, deadline=deadline) as (switch, clients):
        allreduce_all(clients, [[v] for v in x])  # one good round first: the stream is established
        futures = [c.allreduce_async(v, inplace=False) for c, v in zip(clients[:2], x[:2])]
        stopped = clients[2].allreduce_async(x[2], inplace=False)
        clients[2].close()  # rank 2 stops mid-operation
        with pytest.raises(AgentClosedError):
            stopped.result(WAIT)
        errors = []
        for f in futures:
            with pytest.raises(AllReduceTimeout) as info:
                f.result(WAIT)
            errors.append(info.value)
        for rank, err in enumerate(errors):
            text = str(err)
            assert f"job {switch.job!r}" in text and f"rank {rank}" in text
            assert "slot(s) still missing" in text and "tsi" in text
            assert err.waited >= deadline
            assert err.missing  # the slots it was waiting for, with their tsi
        with pytest.raises(AgentBrokenError):
            clients[0].allreduce(x[0])


def test_peer_that_never_issues_the_all_reduce() -> None:
    n, deadline = 2, 0.5
    with job(n, deadline=deadline) as (_, clients):
        future = clients[0].allreduce_async(np.ones(10, np.float32))
        queued = clients[0].allreduce_async(
            np.ones(10, np.float32)
        )  # behind it: fails with the broken stream
        with pytest.raises(AllReduceTimeout, match="rank 0"):
            future.result(WAIT)
        with pytest.raises(AgentBrokenError):
            queued.result(WAIT)


def test_close_fails_queued_work_and_is_idempotent() -> None:
    with job(2) as (_, clients):
        future = clients[0].allreduce_async(np.ones(100, np.float32))
        clients[0].close()
        clients[0].close()
        with pytest.raises(AgentClosedError):
            future.result(WAIT)
        with pytest.raises(AgentClosedError):
            clients[0].allreduce_async(np.ones(1, np.float32))


def test_heartbeat_while_joined_and_leave_on_close() -> None:
    switch = FakeSwitch(1)
    controller = FakeController(switch)
    from netagg.host_agent.client import AllReduceClient

    with switch:
        client = AllReduceClient.join(controller, switch.job, 1, 0, heartbeat_interval=0.02)
        try:
            wait_for(lambda: controller.heartbeats[0] >= 2, "a heartbeat reaching the controller")
            np.testing.assert_array_equal(client.allreduce(np.arange(5, dtype=np.int32)), np.arange(5))
        finally:
            client.close()
    assert controller.left == [0]


def test_callbacks_may_chain_async_work_but_not_block() -> None:
    with job(1) as (_, clients):
        client = clients[0]
        chained: list[Future[Any]] = []
        refused: list[BaseException] = []

        def callback(_: Future[Any]) -> None:
            chained.append(client.allreduce_async(np.arange(3, dtype=np.int32)))
            try:
                client.allreduce(np.arange(3, dtype=np.int32))
            except AgentError as exc:
                refused.append(exc)
            client.close()  # closing from a callback must not wait for the callback's own thread

        client.allreduce_async(np.ones(4, np.float32)).add_done_callback(callback)
        wait_for(lambda: bool(chained and refused), "the callback")
        assert "would wait for itself" in str(refused[0])
        with pytest.raises(AgentClosedError):
            chained[0].result(WAIT)


def test_join_that_cannot_run_leaves_again() -> None:
    switch = FakeSwitch(1, slots=8)
    controller = FakeController(switch)
    from netagg.host_agent.client import AllReduceClient

    with switch, pytest.raises(AgentInputError, match="deadline must be positive"):
        AllReduceClient.join(controller, switch.job, 1, 0, deadline=0)
    assert controller.left == [0]


def test_job_dropped_by_the_controller_breaks_the_client_clearly() -> None:
    switch = FakeSwitch(2)
    controller = FakeController(switch)
    from netagg.host_agent.client import AllReduceClient

    class Gone(Exception):
        status = 404  # what the job API answers for a job it does not know

    with switch:
        client = AllReduceClient.join(controller, switch.job, 2, 0, heartbeat_interval=0.02, deadline=30)
        try:
            stuck = client.allreduce_async(np.ones(10, np.float32))  # rank 1 never joins: no progress
            controller.heartbeat_error = Gone("UnknownJob: no active job 'test-job' (HTTP 404)")
            with pytest.raises(AgentBrokenError, match="no longer knows job 'test-job' rank 0"):
                stuck.result(WAIT)  # long before the 30 s deadline
            with pytest.raises(AgentBrokenError):
                client.allreduce_async(np.ones(1, np.float32))
        finally:
            client.close()


def test_wildcard_bind_is_refused_before_joining() -> None:
    switch = FakeSwitch(1)
    controller = FakeController(switch)
    from netagg.host_agent.client import AllReduceClient

    with pytest.raises(AgentInputError, match="not a wildcard"):
        AllReduceClient.join(controller, switch.job, 1, 0, bind="0.0.0.0")
    assert controller.left == [] and not switch.worker_addresses()


def test_window_is_the_grant_so_all_ranks_agree() -> None:
    switch = FakeSwitch(2, slots=8)
    with job(2, switch, window=64) as (_, clients):  # asks for 64, the switch grants 8
        assert [c.window for c in clients] == [8, 8]


torch = pytest.importorskip("torch")


@pytest.fixture
def numpy_views(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The tensors the agent viewed through .numpy(): only plain, dense float32 CPU tensors summed in place may be
    (no copy); every other tensor is copied with torch ops, so any layout or dtype torch supports works."""
    viewed: list[object] = []
    original = torch.Tensor.numpy

    def record(self: torch.Tensor, *args: object, **kwargs: object) -> object:
        assert type(self) is torch.Tensor and self.dtype == torch.float32 and self.is_contiguous(), (
            f"Tensor.numpy() was called on a {self.dtype} tensor of strides {self.stride()}"
        )
        viewed.append(self.data_ptr())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", record)
    return viewed


def test_torch_tensors_in_place_and_new(numpy_views: list[object]) -> None:
    n = 2
    gen = torch.Generator().manual_seed(0)
    f32 = [torch.randn(33, 17, generator=gen) * (r + 1) for r in range(n)]
    bf16 = [torch.randn(300, generator=gen).to(torch.bfloat16) for _ in range(n)]
    f16 = [torch.randn(300, generator=gen).to(torch.float16) for _ in range(n)]
    i32 = [torch.randint(-100, 100, (1000,), generator=gen, dtype=torch.int32) for _ in range(n)]
    strided = [torch.randn(40, 60, generator=gen)[:, ::3] for _ in range(n)]  # non-contiguous, in place
    ref_f32 = [t.clone() for t in f32]
    ref_strided = [t.clone() for t in strided]
    ref_i32 = sum(i32)

    def body(rank: int, client: object) -> list[object]:
        c = client  # type: ignore[assignment]
        futures = [
            c.allreduce_async(f32[rank]),  # type: ignore[attr-defined]
            c.allreduce_async(bf16[rank], inplace=False),  # type: ignore[attr-defined]
            c.allreduce_async(f16[rank], inplace=False),  # type: ignore[attr-defined]
            c.allreduce_async(i32[rank], inplace=False),  # type: ignore[attr-defined]
            c.allreduce_async(strided[rank]),  # type: ignore[attr-defined]
        ]
        return [f.result(WAIT) for f in futures]

    with job(n) as (_, clients):
        results = run_ranks(clients, body)
    assert set(numpy_views) == {t.data_ptr() for t in f32}  # the in-place float32 tensors, used where they are
    for r in range(n):
        out_f32, out_bf16, out_f16, out_i32, out_strided = results[r]
        assert out_f32 is f32[r] and out_strided is strided[r]
        assert (
            out_bf16.dtype == torch.bfloat16
            and out_f16.dtype == torch.float16
            and out_i32.dtype == torch.int32
        )
        assert torch.equal(out_i32, ref_i32)
        reference = [t.reshape(-1).clone().detach().to(torch.float32).tolist() for t in ref_f32]
        assert_close_to_reference(
            np.array(out_f32.reshape(-1).tolist(), dtype=np.float32),
            [np.array(v, dtype=np.float32) for v in reference],
            LANES,
        )
        assert torch.allclose(out_strided, ref_strided[0] + ref_strided[1], atol=1e-5)
        expected_bf16 = (bf16[0].float() + bf16[1].float()).to(torch.bfloat16)
        assert torch.allclose(out_bf16.float(), expected_bf16.float(), rtol=1e-2, atol=1e-2)
