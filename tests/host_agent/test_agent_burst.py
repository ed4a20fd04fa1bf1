"""The burst data path: header vectors, GSO/GRO and sendmmsg/recvmmsg bursts, and all-reduces in every mode."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest
from agent_harness import allreduce_all, job, run_ranks
from fake_agg_switch import FakeSwitch, Impairment

from netagg.constants import MsgType
from netagg.host_agent.burst import HEADER_DTYPE, BurstSocket, headers
from netagg.host_agent.staging import stage
from netagg.wire import HEADER_BYTES, pack_header

SEG = 1042  # a 256-lane message


@pytest.mark.unit
def test_header_dtype_reads_and_writes_what_the_wire_module_packs() -> None:
    assert HEADER_DTYPE.itemsize == HEADER_BYTES
    buf = np.zeros(3 * SEG, np.uint8)
    for i in range(3):
        pack_header(buf[i * SEG :], 0, msg_type=MsgType.RESULT, size=3, job=200 + i, tsi=0xFFFFFFF0 + i,
                    slot=0x7FFF - i, set=i & 1, exp=-128 + i, flags=4, key=0xDEADBEEF - i,
                    op=0x01020304 * (i + 1))  # fmt: skip
    h = headers(buf, 3, SEG)
    assert h["job"].tolist() == [200, 201, 202]
    assert h["tsi"].tolist() == [0xFFFFFFF0, 0xFFFFFFF1, 0xFFFFFFF2]
    assert (h["pool"] & 0x7FFF).tolist() == [0x7FFF, 0x7FFE, 0x7FFD] and (h["pool"] >> 15).tolist() == [0, 1, 0]
    assert h["exp"].tolist() == [-128, -127, -126] and h["key"].tolist() == [0xDEADBEEF - i for i in range(3)]
    assert h["op"].tolist() == [0x01020304 * (i + 1) for i in range(3)] and set(h["flags"].tolist()) == {4}
    expected = bytes(buf)
    h["tsi"] = h["tsi"]  # written back as vectors: the same bytes
    h["key"][1] = 0xDEADBEEF - 1
    assert bytes(buf) == expected


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        a.setblocking(False)
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


def _numbered(count: int) -> np.ndarray:
    buf = np.zeros((count, SEG), np.uint8)
    buf[:, 0] = np.arange(count)
    buf[:, -1] = 0xA5
    return buf


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


@pytest.mark.loopback
@pytest.mark.parametrize("mode", ["gso", "sendmmsg"])
def test_a_burst_reaches_a_plain_socket_as_separate_datagrams(pair, mode: str) -> None:
    a, b = pair
    io = BurstSocket(a, SEG, 256, send_mode=mode, recv_mode="recvmmsg")
    sent, err = io.send(_numbered(150), 150)
    assert (sent, err) == (150, 0)
    assert io.send_calls == 3  # at most 64 per system call, whichever the mode
    got = _drain(b)
    assert [len(d) for d in got] == [SEG] * 150 and [d[0] for d in got] == list(range(150))


@pytest.mark.loopback
def test_gro_takes_a_gso_burst_in_one_call_and_drops_datagrams_of_another_size(pair) -> None:
    a, b = pair
    sender = BurstSocket(a, SEG, 64, send_mode="gso", recv_mode="recvmmsg")
    receiver = BurstSocket(b, SEG, 256, send_mode="sendmmsg", recv_mode="gro")
    assert (sender.send_mode, receiver.recv_mode) == ("gso", "gro")
    sender.send(_numbered(40), 40)
    a.send(b"x" * 100)  # a short datagram and a long one between two bursts
    a.send(b"y" * (SEG + 1))
    sender.send(_numbered(20), 20)
    good, wrong = receiver.recv(256)
    assert (good, wrong) == (60, 2)
    assert receiver.recv_calls < 10  # two coalesced runs, the odd ones, and the empty socket
    rows = receiver.rbuf[: 60 * SEG].reshape(60, SEG)
    assert rows[:, 0].tolist() == list(range(40)) + list(range(20)) and set(rows[:, -1].tolist()) == {0xA5}


@pytest.mark.loopback
def test_recvmmsg_keeps_the_datagrams_of_the_right_size_in_order(pair) -> None:
    a, b = pair
    receiver = BurstSocket(b, SEG, 256, send_mode="sendmmsg", recv_mode="recvmmsg")
    data = _numbered(5)
    for i in range(5):
        a.send(data[i].tobytes())
        if i == 2:
            a.send(b"z" * (SEG + 8))  # longer: seen as such (not cut to fit), and dropped
            a.send(b"")
    good, wrong = receiver.recv(256)
    assert (good, wrong) == (5, 2)
    assert receiver.rbuf[: 5 * SEG].reshape(5, SEG)[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert receiver.recv(256) == (0, 0)


@pytest.mark.loopback
def test_auto_receive_drops_gro_when_the_switch_sends_datagram_by_datagram(pair) -> None:
    a, b = pair
    receiver = BurstSocket(b, SEG, 256)
    assert receiver.recv_mode == "gro"
    one = _numbered(1).tobytes()
    for _ in range(300):
        a.send(one)
        assert receiver.recv(256) == (1, 0)
    assert receiver.recv_mode == "recvmmsg"
    for _ in range(10):
        a.send(one)
    assert receiver.recv(256) == (10, 0)


@pytest.mark.unit
def test_unknown_modes_are_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(ValueError, match="sendmsg"):
        BurstSocket(s, SEG, 4, send_mode="sendmsg")


IMPAIRED = dict(
    ingress=Impairment(loss=0.05, duplicate=0.05, reorder=0.05),
    egress=Impairment(loss=0.05, duplicate=0.05, reorder=0.05),
)


@pytest.mark.loopback
@pytest.mark.parametrize("send_mode", ["gso", "sendmmsg"])
@pytest.mark.parametrize("recv_mode", ["gro", "recvmmsg"])
def test_every_io_mode_gives_the_bits_of_a_lossless_run_under_faults(send_mode: str, recv_mode: str) -> None:
    rng = np.random.default_rng(5)
    inputs = [
        [(rng.standard_normal(20000) * (r + 1)).astype(np.float32), rng.integers(-99, 99, 3000, dtype=np.int32)]
        for r in range(3)
    ]
    with job(3) as (_, clients):
        lossless = allreduce_all(clients, inputs)
    switch = FakeSwitch(3, seed=9, **IMPAIRED)
    with job(3, switch, send_mode=send_mode, recv_mode=recv_mode, loss=0.02, loss_seed=3) as (_, clients):
        assert {(c.stats.send_mode, c.stats.recv_mode) for c in clients} == {(send_mode, recv_mode)}
        results = allreduce_all(clients, inputs)
        assert sum(c.stats.retransmissions for c in clients) > 0
        assert switch.counters["retransmission_differs"] == 0
    for r in range(3):
        for got, want in zip(results[r], lossless[r]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.loopback
@pytest.mark.parametrize("count", [100, 256 * 7, 256 * 40 + 13])
def test_in_place_float32_sums_land_in_the_callers_array(count: int) -> None:
    """No copy of an in-place float32 array: the agent reads and writes it directly, only a partial last block
    goes through its own buffer; the bits are those of a copying (inplace=False) all-reduce."""
    rng = np.random.default_rng(count)
    inputs = [(rng.standard_normal(count) * (r + 1)).astype(np.float32) for r in range(2)]
    staged, _ = stage(inputs[0].copy(), lanes=256, inplace=True)
    assert staged.caller_memory and staged.head.size == count // 256 * 256 and staged.tail.shape[0] == (count % 256 > 0)
    with job(2) as (_, clients):
        copies = allreduce_all(clients, [[x] for x in inputs])
        arrays = [x.copy() for x in inputs]
        returned = run_ranks(clients, lambda rank, client: client.allreduce(arrays[rank]))
    for rank in range(2):
        assert returned[rank] is arrays[rank]
        np.testing.assert_array_equal(arrays[rank], copies[rank][0])
