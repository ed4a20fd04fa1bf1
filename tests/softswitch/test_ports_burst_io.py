"""Native burst I/O in UDP mode on loopback: the same frames as the Python path, bursts that overflow, sends."""

from __future__ import annotations

import select
import socket
import time

import pytest
from test_pipeline_contract import contract_state, install_switch
from test_ports_udp import DEADLINE_S, udp_socket

from netagg.softswitch.pipeline import Burst, OutBurst, Pipeline
from netagg.softswitch.ports import UDP_PORT_NUMBER, UdpPorts
from netagg.wire import AGG_OFFSET, ETH_HEADER_BYTES, IPV4_UDP

pytestmark = pytest.mark.loopback


def ports_pair() -> tuple[Pipeline, UdpPorts, UdpPorts]:
    state = contract_state()
    install_switch(state)
    pipeline = Pipeline(state)
    native = UdpPorts(("127.0.0.1", 0), pipeline.agg_source, native=True)
    python = UdpPorts(("127.0.0.1", 0), pipeline.agg_source, native=False)
    return pipeline, native, python


def wait_readable(fd: int) -> None:
    assert select.select([fd], [], [], DEADLINE_S)[0], "nothing to read before the deadline"


def test_native_receive_synthesizes_the_python_paths_frames() -> None:
    _, native, python = ports_pair()
    payloads = [b"", b"x", bytes(range(200)), b"\xff" * 1100]
    with native, python, udp_socket() as sender:
        for data in payloads:
            sender.sendto(data, native.address)
            sender.sendto(data, python.address)
        burst = Burst()
        (fd,) = native.fds()
        deadline = time.monotonic() + DEADLINE_S
        while burst.count < len(payloads) and time.monotonic() < deadline:
            wait_readable(fd)
            native.receive_burst(fd, burst)
        seen: list[tuple[int, bytes]] = []
        (pfd,) = python.fds()
        while len(seen) < len(payloads) and time.monotonic() < deadline:
            wait_readable(pfd)
            python.receive(pfd, lambda frame, port: seen.append((port, bytes(frame))))
    assert burst.frames() == seen
    assert [frame[AGG_OFFSET:] for _, frame in seen] == payloads
    assert native.stats.rx == python.stats.rx == len(payloads)


def test_a_full_burst_leaves_the_rest_pending_in_order() -> None:
    _, native, python = ports_pair()
    python.close()
    with native, udp_socket() as sender:
        for i in range(10):
            sender.sendto(i.to_bytes(4, "big"), native.address)
        (fd,) = native.fds()
        got: list[int] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 10 and time.monotonic() < deadline:
            if not native.pending_fds():
                wait_readable(fd)
            small = Burst(frames=3)  # room for 3 frames: the others stay received, for the next call
            native.receive_burst(fd, small)
            assert small.count <= 3
            got += [int.from_bytes(frame[AGG_OFFSET:], "big") for _, frame in small.frames()]
        assert got == list(range(10))
        assert native.pending_fds() == []


@pytest.mark.parametrize("native", [True, False], ids=["native-io", "python-io"])
def test_send_burst_sends_udp_results_and_counts_the_rest(native: bool) -> None:
    pipeline, native_ports, python_ports = ports_pair()
    ports, other = (native_ports, python_ports) if native else (python_ports, native_ports)
    other.close()
    with ports, udp_socket() as receiver:
        host, port = receiver.getsockname()
        frame = bytearray(AGG_OFFSET + 8)
        frame[12:14] = b"\x08\x00"
        IPV4_UDP.pack_into(
            frame, ETH_HEADER_BYTES, 0x45, 0, 28 + 5, 0, 0, 64, 17, 0, 0,
            int.from_bytes(socket.inet_aton(host), "big"), 48864, port, 8 + 5, 0,
        )  # fmt: skip
        frame[AGG_OFFSET:] = b"hello..."  # 3 bytes past the UDP length: Ethernet padding, not sent
        arp = bytes(frame[:12]) + b"\x08\x06" + bytes(frame[14:])
        out = OutBurst()
        for egress, data in ((UDP_PORT_NUMBER, frame), (2, frame), (UDP_PORT_NUMBER, arp), (UDP_PORT_NUMBER, frame)):
            out.append(egress, data)
        ports.send_burst(out)
        assert [receiver.recv(100) for _ in range(2)] == [b"hello", b"hello"]
        assert (ports.stats.tx, ports.stats.tx_unroutable, ports.stats.tx_errors) == (2, 2, 0)


def test_a_coalesced_gso_burst_is_split_into_its_datagrams_in_order() -> None:
    """A worker's UDP GSO burst reaches the switch as one GRO run; every datagram becomes its own frame, also
    when the run fills several bursts (the rest waits in the landing area)."""
    from netagg.host_agent import _native as agent_native  # the agent's GSO send

    _, native, python = ports_pair()
    python.close()
    seg, count = 100, 12
    data = bytes((i * 7 + k) & 0xFF for i in range(count) for k in range(seg)) + b"tail"
    with native, udp_socket() as sender:
        sender.connect(native.address)
        sent, _, err = agent_native.send_burst(sender.fileno(), data, seg, count, 0)
        sender.send(data[-4:])  # not part of the run: a shorter datagram after it
        assert (sent, err) == (count, 0)
        (fd,) = native.fds()
        got: list[bytes] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < count + 1 and time.monotonic() < deadline:
            if not native.pending_fds():
                wait_readable(fd)
            small = Burst(frames=5)
            native.receive_burst(fd, small)
            got += [frame[AGG_OFFSET:] for _, frame in small.frames()]
    assert got == [data[i * seg : (i + 1) * seg] for i in range(count)] + [b"tail"]
    assert native.stats.rx == count + 1


def test_results_to_several_workers_keep_their_order_per_worker() -> None:
    """The native send groups each destination's equal-size datagrams into GSO messages; every worker still gets
    its datagrams whole and in order, whatever the interleaving in the burst."""
    pipeline, ports, other = ports_pair()
    other.close()
    with ports, udp_socket() as a, udp_socket() as b:
        out = OutBurst()
        expected: dict[int, list[bytes]] = {0: [], 1: []}
        for i in range(150):
            k = i % 2
            host, port = (a, b)[k].getsockname()
            size = 64 if i != 77 else 65  # one odd size: its own message
            payload = bytes([i]) * size
            frame = bytearray(AGG_OFFSET + size)
            frame[12:14] = b"\x08\x00"
            IPV4_UDP.pack_into(
                frame, ETH_HEADER_BYTES, 0x45, 0, 28 + size, 0, 0, 64, 17, 0, 0,
                int.from_bytes(socket.inet_aton(host), "big"), 48864, port, 8 + size, 0,
            )  # fmt: skip
            frame[AGG_OFFSET:] = payload
            out.append(UDP_PORT_NUMBER, frame)
            expected[k].append(payload)
        ports.send_burst(out)
        for k, sock in enumerate((a, b)):
            sock.settimeout(DEADLINE_S)
            assert [sock.recv(2048) for _ in expected[k]] == expected[k]
        assert (ports.stats.tx, ports.stats.tx_errors) == (150, 0)
