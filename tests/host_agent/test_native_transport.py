"""The compiled transport engine against the Python reference transport, on the same streams.

Sums are deterministic (a chunk's shared exponent is the max of the workers' own, whatever the timing), so every
datapath, and any mix of them within one job, must return bit-identical results, also through loss, duplicates
and reordering. Lossless sequential all-reduces must also send exactly the same UPDATEs, warm-ups included: the
two state machines make the same decisions.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import numpy as np
import pytest
from agent_harness import WAIT, job, run_ranks
from fake_agg_switch import FakeSwitch, Impairment

from netagg.host_agent import _native
from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.native_transport import NativeTransport, make_transport
from netagg.host_agent.transport import Transport, TransportConfig

pytestmark = pytest.mark.loopback

#: This module picks the data path per client itself.
EACH_DATAPATH = False


def _inputs(rank: int, seed: int) -> list[np.ndarray]:
    """Tensors that reach every staging layout: odd sizes (a partial last block), NaN and inf blocks, int32,
    float16/float64 (copied into float32 staging), zero-size."""
    rng = np.random.default_rng(seed * 100 + rank)
    with_nan = rng.standard_normal(3000).astype(np.float32)
    with_nan[700] = np.nan if rank == 0 else 1.0
    with_inf = (rng.standard_normal(600) * 1e3).astype(np.float32)
    with_inf[5] = np.inf if rank == 1 else 0.0
    return [
        rng.standard_normal(1).astype(np.float32),
        rng.standard_normal(257).astype(np.float32),
        (rng.standard_normal(40_000) * 10.0 ** rng.integers(-8, 8, 40_000)).astype(np.float32),
        with_nan,
        with_inf,
        rng.integers(-(2**31), 2**31 - 1, 5000, dtype=np.int64).astype(np.int32),
        rng.standard_normal(1000).astype(np.float16),
        rng.standard_normal(999),
        np.zeros(0, np.float32),
        rng.standard_normal(70_000).astype(np.float32),
    ]


def _run(datapaths: Sequence[str], inplace: bool, switch: FakeSwitch, **options: object) -> list[list[np.ndarray]]:
    """Every rank queues all of its tensors at once, each with its own data path; the results per rank."""
    n = len(datapaths)

    def body(rank: int, client: AllReduceClient) -> list[np.ndarray]:
        tensors = [x.copy() for x in _inputs(rank, 7)]
        futures = [client.allreduce_async(x, inplace=inplace) for x in tensors]
        return [f.result(WAIT) for f in futures]

    with job(n, switch, datapaths, **options) as (_, clients):
        for client, name in zip(clients, datapaths):
            assert client._transport.__class__ is (NativeTransport if name == "native" else Transport)
        return run_ranks(clients, body)


def _bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize("inplace", [False, True], ids=["copied", "in-place"])
def test_every_mix_of_datapaths_returns_the_same_bits(inplace: bool) -> None:
    reference = _run(["python"] * 3, inplace, FakeSwitch(3))
    for plan in (["native"] * 3, ["native", "python", "native"]):
        got = _run(plan, inplace, FakeSwitch(3))
        for rank in range(3):
            for k, (a, b) in enumerate(zip(got[rank], reference[rank])):
                assert a.dtype == b.dtype and a.shape == b.shape, f"{plan} rank {rank} tensor {k}"
                assert _bits(a) == _bits(b), f"{plan} rank {rank} tensor {k} differs from the Python transport"


def test_same_bits_through_loss_duplicates_and_reordering() -> None:
    def impaired(seed: int) -> FakeSwitch:
        fault = Impairment(loss=0.05, duplicate=0.05, reorder=0.1)
        return FakeSwitch(2, ingress=fault, egress=Impairment(loss=0.05, duplicate=0.05, reorder=0.1), seed=seed)

    reference = _run(["python", "python"], False, impaired(3))
    got = _run(["native", "native"], False, impaired(4))
    mixed = _run(["python", "native"], True, impaired(5))
    for rank in range(2):
        for a, b, c in zip(got[rank], reference[rank], mixed[rank]):
            assert _bits(a) == _bits(b) == _bits(c)


def test_lossless_sequential_allreduces_send_the_same_updates() -> None:
    """One call at a time: every op starts with warm-ups on its slots; both state machines send the same
    rounds, so the counters agree exactly (congestion control changes when, not what)."""
    counters = {}
    for name in ("python", "native"):
        with job(2, FakeSwitch(2), [name, name], window=16) as (_, clients):

            def body(rank: int, client: AllReduceClient) -> None:
                for x in _inputs(rank, 11):
                    client.allreduce(x.copy())

            run_ranks(clients, body)
            counters[name] = [
                # a retransmission is timing (a stalled thread on a busy machine), the rest is the state machine
                (s.updates_sent - s.retransmissions, s.warmups_sent, s.results, s.malformed, s.forged)
                for s in (c.stats for c in clients)
            ]
    assert counters["native"] == counters["python"]
    assert counters["native"][0][1] > 0  # warm-ups happened, so both took that path


def test_the_datapath_is_chosen_by_option_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    session = FakeSwitch(1).join_result(0)

    for env, option, expected in (
        (None, "", NativeTransport),
        ("python", "", Transport),
        ("python", "native", NativeTransport),
        ("native", "python", Transport),
    ):
        if env is None:
            monkeypatch.delenv("NETAGG_DATAPATH", raising=False)
        else:
            monkeypatch.setenv("NETAGG_DATAPATH", env)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            t = make_transport(session, sock, TransportConfig(window=4, datapath=option), print, print)
            assert type(t) is expected
            t.close()
    monkeypatch.setenv("NETAGG_DATAPATH", "fast")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(ValueError, match="choose one"):
        make_transport(session, sock, TransportConfig(window=4), print, print)


def _engine(**changes: object) -> _native.Engine:
    args: dict[str, object] = dict(
        fd=-1, wake_fd=-1, window=4, lanes=32, seg=18 + 128, budget=8, scale_base=30, b0_result=0x90, job=1,
        undefined_flags=0xF0, key=5, header=bytes(18), send_mode=0, recv_mode=1, gro_probe=False,
        rto=(0.05, 0.02, 0.5, 0.25), congestion=None, loss=0.0, loss_seed=0, deadline=1.0,
    )  # fmt: skip
    args.update(changes)
    return _native.Engine(**args)


def test_the_engine_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="header must be 18 bytes"):
        _engine(header=bytes(17))
    with pytest.raises(ValueError, match="unusable configuration"):
        _engine(seg=100)  # not a header and 32 lanes
    with pytest.raises(ValueError, match="unusable configuration"):
        _engine(window=0)
    engine = _engine()
    rows = np.zeros((2, 32), np.float32)
    exps, flags, used = np.zeros(2, np.int8), np.zeros(2, bool), np.zeros(2, np.int8)
    empty = np.zeros((0, 0), np.float32)
    with pytest.raises(ValueError, match="rows of 32 contiguous 4-byte values"):
        engine.add(0, 1, False, False, False, np.zeros((2, 16), np.float32), empty, exps, flags, used, None)
    with pytest.raises(ValueError, match="rows of 32 contiguous 4-byte values"):
        engine.add(0, 1, False, False, False, np.zeros((2, 32), np.float64), empty, exps, flags, used, None)
    with pytest.raises(ValueError, match="must hold 3 one-byte values"):
        engine.add(0, 1, False, False, False, np.zeros((3, 32), np.float32), empty, exps, flags, used, None)
    with pytest.raises(ValueError, match="no blocks"):
        engine.add(0, 1, False, False, False, empty, empty, exps[:0], flags[:0], used[:0], None)
    with pytest.raises(ValueError, match="read-only"):  # the sums land in head: it must be writable
        engine.add(0, 1, False, False, False, np.frombuffer(bytes(256), np.float32).reshape(2, 32), empty, exps,
                   flags, used, None)  # fmt: skip
    with pytest.raises(ValueError, match="need result_nonfinite"):
        engine.add(0, 1, False, True, False, rows.view(np.int32), empty, exps, flags, used, None)
    with pytest.raises(ValueError, match="must hold 2 one-byte values"):
        engine.add(0, 1, False, True, False, rows.view(np.int32), empty, exps, flags, used, flags[:1].copy())
    engine.add(0, 1, False, False, False, rows, empty, exps, flags, used, None)
    assert engine.op_state(0)[2:] == (2, 0, 0)
    assert engine.op_state(1) is None
