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
from netagg.softswitch.pipeline import Pipeline
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


@pytest.mark.parametrize("ring", [True, False], ids=["rx-ring", "recv"])
def test_af_packet_ports_aggregate_flood_and_ignore_their_own_sends(
    veths: Veths, ring: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ring:  # a kernel that refuses PACKET_RX_RING: the ports fall back to a receive call per frame

        def refuse(*args: object) -> None:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")

        monkeypatch.setattr(ports_module, "RxRing", refuse)
    state = contract_state()
    install_switch(state, ports=(1, 2))
    job = make_job(5, 2, ports=(1, 2), size=1)
    install_job(state, job)
    with state.lock:
        state.tables["l2_forward"].entries[(MARKER_TO_1,)] = Action("forward", {"port": 1})
        state.tables["l2_forward"].entries[(MARKER_TO_2,)] = Action("forward", {"port": 2})
        state.bump()
    pipeline = Pipeline(state, seed=1)
    with inside(veths.namespace):
        ports = AfPacketPorts({1: "sw1", 2: "sw2"})
    assert ports.ring_ports() == ([1, 2] if ring else [])
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
