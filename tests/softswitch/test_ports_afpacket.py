"""AF_PACKET ports: the switch end of two veth pairs in a namespace of the test's own, frames sent and
received on the other ends with raw sockets. Needs root; the namespace and the pairs are deleted afterwards."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import parse_result, plain_frame, update_frame
from test_pipeline_contract import (
    contract_state,
    drops,
    install_job,
    install_switch,
    job_stats,
    make_job,
)

from netagg.constants import JobStat
from netagg.softswitch import ports as ports_module
from netagg.softswitch.pipeline import Burst, OutBurst, Pipeline
from netagg.softswitch.ports import (
    ETH_P_ALL,
    PACKET_IGNORE_OUTGOING,
    SOL_PACKET,
    AfPacketPorts,
    PortError,
)
from netagg.softswitch.state import Action
from netagg.softswitch.switch import SoftSwitch

pytestmark = pytest.mark.netns

DEADLINE_S = 10.0
CLONE_NEWNET = 0x40000000
SWITCH_IFACES = ("sw1", "sw2")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


class Veths:
    """Namespace ``namespace`` holding sw1/sw2, peers ``test_ifaces`` in the caller's namespace."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.namespace = f"netagg-ssw-{pid}"
        self.test_ifaces = (f"nass{pid}a", f"nass{pid}b")

    def create(self) -> None:
        _run("ip", "netns", "add", self.namespace)
        try:
            for test_if, switch_if in zip(self.test_ifaces, SWITCH_IFACES):
                _run(
                    "ip",
                    "link",
                    "add",
                    test_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    switch_if,
                    "netns",
                    self.namespace,
                )
                # No IPv6 on the test ends: the kernel would send solicitations the switch floods to us.
                Path(f"/proc/sys/net/ipv6/conf/{test_if}/disable_ipv6").write_text("1\n")
                _run("ip", "netns", "exec", self.namespace, "ip", "link", "set", switch_if, "up")
                _run("ip", "link", "set", test_if, "up")
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        for test_if in self.test_ifaces:  # deleting one end deletes the pair
            subprocess.run(["ip", "link", "del", test_if], capture_output=True, timeout=20, check=False)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=20, check=False)


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block with this thread in ``namespace`` (sockets created there stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)
        os.close(target)


@pytest.fixture(scope="module")
def veths() -> Iterator[Veths]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2")
    v = Veths()
    v.create()
    try:
        yield v
    finally:
        v.delete()


def raw_socket(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((iface, ETH_P_ALL))
    sock.settimeout(DEADLINE_S)
    return sock


def receive_matching(sock: socket.socket, predicate) -> bytes:  # type: ignore[no-untyped-def]
    """The first frame on ``sock`` that satisfies ``predicate`` (stray frames are skipped), with a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        frame = sock.recv(65536)
        if predicate(frame):
            return frame
    raise AssertionError("no matching frame before the deadline")


MARKER_TO_1 = 0x02_00_00_00_77_01
MARKER_TO_2 = 0x02_00_00_00_77_02


def is_plain(frame: bytes) -> bool:
    """The test's own non-IP frames (EtherType 0x88B5, local experimental)."""
    return frame[12:14] == b"\x88\xb5"


def is_result_for(udp_port: int):  # type: ignore[no-untyped-def]
    def match(frame: bytes) -> bool:
        return frame[12:14] == b"\x08\x00" and frame[23] == 17 and frame[36:38] == udp_port.to_bytes(2, "big")

    return match


def _refuse(*args: object) -> None:
    raise OSError(errno.ENOPROTOOPT, "Protocol not available")


#: How the ports move frames: native bursts (recvmmsg / sendmmsg in C), or in Python from a receive ring, or
#: with a receive call per frame (a kernel that refuses the ring).
IO_MODES = ["native", "rx-ring", "recv"]


def open_ports(veths: Veths, interfaces: dict[int, str], io: str, monkeypatch: pytest.MonkeyPatch) -> AfPacketPorts:
    if io == "recv":
        monkeypatch.setattr(ports_module, "RxRing", _refuse)
    with inside(veths.namespace):
        ports = AfPacketPorts(interfaces, native=io == "native")
    assert ports.native == (io == "native")
    assert ports.ring_ports() == (sorted(interfaces) if io == "rx-ring" else [])
    return ports


def send_frames(ports: AfPacketPorts, frames: list[tuple[int, bytes]]) -> None:
    """Send ``frames`` as the switch loop does: one output burst."""
    out = OutBurst()
    for port, frame in frames:
        assert out.append(port, frame)
    ports.send_burst(out)


@pytest.mark.parametrize("io", IO_MODES)
def test_af_packet_ports_aggregate_flood_and_ignore_their_own_sends(
    veths: Veths, io: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = contract_state()
    install_switch(state, ports=(1, 2))
    job = make_job(5, 2, ports=(1, 2), size=1)
    install_job(state, job)
    with state.lock:
        state.tables["l2_forward"].entries[(MARKER_TO_1,)] = Action("forward", {"port": 1})
        state.tables["l2_forward"].entries[(MARKER_TO_2,)] = Action("forward", {"port": 2})
        state.bump()
    pipeline = Pipeline(state, seed=1)
    ports = open_ports(veths, {1: "sw1", 2: "sw2"}, io, monkeypatch)
    with (
        SoftSwitch(pipeline, ports),
        raw_socket(veths.test_ifaces[0]) as t1,
        raw_socket(veths.test_ifaces[1]) as t2,
    ):
        rng = np.random.default_rng(3)
        for tsi in range(10):
            values = [rng.integers(-50, 50, size=64).astype(np.int32) for _ in range(2)]
            t1.send(update_frame(job.workers[0], tsi=tsi, slot=tsi % 4, set_=(tsi // 4) % 2, lanes=values[0]))
            t2.send(update_frame(job.workers[1], tsi=tsi, slot=tsi % 4, set_=(tsi // 4) % 2, lanes=values[1]))
            for sock, worker in ((t1, job.workers[0]), (t2, job.workers[1])):
                r = parse_result(receive_matching(sock, is_result_for(worker.udp_port)))
                assert r["header"].tsi == tsi and r["ip_dst"] == worker.ip and r["ip_checksum_ok"]
                np.testing.assert_array_equal(r["lanes"], values[0] + values[1])
        # A broadcast from port 2 is flooded to port 1 only. Ordering proves the pruning without a timeout:
        # port 1 receives the flood copy and then a frame forwarded after it; only then does the test send a
        # frame to port 2, which must be the first one port 2 sees.
        flood = plain_frame(0xFFFF_FFFF_FFFF, 0x02_00_00_00_66_01, length=64)
        to_port1 = plain_frame(MARKER_TO_1, 0x02_00_00_00_66_01, length=64)
        to_port2 = plain_frame(MARKER_TO_2, 0x02_00_00_00_66_02, length=64)
        t2.send(flood)
        t2.send(to_port1)
        assert receive_matching(t1, is_plain) == flood
        assert receive_matching(t1, is_plain) == to_port1
        t1.send(to_port2)
        assert receive_matching(t2, is_plain) == to_port2
    # Had the switch seen its own RESULTs, it would have counted them as BAD_MSG_TYPE.
    assert drops(state) == {}
    assert job_stats(state, 5) == {JobStat.AGGREGATED: 20, JobStat.COMPLETED: 10}
    assert ports.stats.tx == 20 + 3


def test_missing_interface_is_a_clear_error(veths: Veths) -> None:
    with inside(veths.namespace), pytest.raises(PortError, match="port 3@nosuchif0"):
        AfPacketPorts({1: "sw1", 3: "nosuchif0"})


def test_cli_serves_af_packet_ports_and_stops_on_sigterm(veths: Veths, tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "netagg-softswitch"
    sock_path = tmp_path / "p4rt.sock"
    argv = [
        "ip",
        "netns",
        "exec",
        veths.namespace,
        str(program),
        "-i",
        "1@sw1",
        "-i",
        "2@sw2",
        "--grpc-server-addr",
        f"unix:{sock_path}",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], DEADLINE_S)
        assert ready, "no readiness line"
        line = proc.stderr.readline()  # type: ignore[union-attr]
        assert "ready" in line and "1@sw1, 2@sw2" in line and str(sock_path) in line, line
        assert sock_path.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE_S)


def numbered(i: int, length: int = 64) -> bytes:
    """A plain frame to port 1's test end carrying ``i`` (to check the order frames arrive in)."""
    return plain_frame(MARKER_TO_1, 0x02_00_00_00_55_01, length=length)[:-4] + i.to_bytes(4, "big")


def receive_numbers(sock: socket.socket, count: int) -> list[int]:
    return [int.from_bytes(receive_matching(sock, is_plain)[-4:], "big") for _ in range(count)]


@pytest.mark.parametrize("io", IO_MODES)
def test_bursts_leave_in_order_per_port(veths: Veths, io: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 150 frames, alternating between the ports: more than one sendmmsg batch per port, and every frame of a
    # port arrives in the order it had in the burst.
    ports = open_ports(veths, {1: "sw1", 2: "sw2"}, io, monkeypatch)
    with ports, raw_socket(veths.test_ifaces[0]) as t1, raw_socket(veths.test_ifaces[1]) as t2:
        send_frames(ports, [(1 + i % 2, numbered(i)) for i in range(150)])
        assert receive_numbers(t1, 75) == list(range(0, 150, 2))
        assert receive_numbers(t2, 75) == list(range(1, 150, 2))
        assert (ports.stats.tx, ports.stats.tx_errors, ports.stats.tx_unroutable) == (150, 0, 0)


@pytest.mark.parametrize("io", IO_MODES)
def test_oversized_frame_is_counted_and_the_others_keep_their_order(
    veths: Veths, io: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = open_ports(veths, {1: "sw1"}, io, monkeypatch)
    with ports, raw_socket(veths.test_ifaces[0]) as t1:
        send_frames(
            ports,
            [
                (1, numbered(0)),
                (1, numbered(1, length=1500 + 14 + 1)),  # one byte over the veth's MTU: the kernel refuses it
                (1, numbered(2)),
                (3, numbered(3)),  # no such port
            ],
        )
        assert receive_numbers(t1, 2) == [0, 2]
        assert (ports.stats.tx, ports.stats.tx_errors, ports.stats.tx_unroutable) == (2, 1, 1)


def wait_until_operational(veths: Veths, switch_iface: str) -> None:
    """Poll until both ends of a pair report state UP (the kernel drops what is sent before, silently)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        states = [
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout
            for argv in (
                ["ip", "-n", veths.namespace, "-o", "link", "show", switch_iface],
                ["ip", "-o", "link", "show", veths.test_ifaces[SWITCH_IFACES.index(switch_iface)]],
            )
        ]
        if all("state UP" in state for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"{switch_iface} not up before the deadline")


@pytest.mark.parametrize("io", IO_MODES)
def test_frames_refused_by_a_down_link_are_counted_and_sending_resumes(
    veths: Veths, io: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = open_ports(veths, {1: "sw1"}, io, monkeypatch)
    link = ["ip", "netns", "exec", veths.namespace, "ip", "link", "set", "sw1"]
    with ports, raw_socket(veths.test_ifaces[0]) as t1:
        _run(*link, "down")
        try:
            send_frames(ports, [(1, numbered(0)), (1, numbered(1))])  # ENETDOWN: both dropped
        finally:
            _run(*link, "up")
        assert (ports.stats.tx, ports.stats.tx_errors) == (0, 2)
        wait_until_operational(veths, "sw1")
        # The flap left ENETDOWN pending on the receive socket: poll reports it until the switch loop's receive
        # reads it (else the loop would spin), and it must not cost the next frame sent.
        (fd,) = ports.fds()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == [(fd, select.POLLERR)]
        if ports.native:
            assert ports.receive_burst(fd, Burst()) == 0
        else:
            ports.receive(fd, lambda frame, port: None)
        assert poller.poll(0) == []
        send_frames(ports, [(1, numbered(2))])
        assert receive_numbers(t1, 1) == [2]
        assert (ports.stats.tx, ports.stats.tx_errors) == (1, 2)
