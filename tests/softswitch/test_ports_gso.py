"""UDP segmentation offload through a veth: a host's GSO send reaches an AF_PACKET switch port as one large frame.

Two namespaces of the test's own, a host and a switch, joined by a veth pair. The host sends 4 datagrams with one
UDP_SEGMENT send (as the host agent does); the switch port must see 4 valid IPv4/UDP datagrams. Native ports
split the frame themselves; the Python ports (a receive ring sized for the MTU) drop it, unless the host turns
segmentation off on its interface (``ethtool -K IFACE tx-udp-segmentation off``). Needs root.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from test_ports_afpacket import inside

from netagg.softswitch.pipeline import Burst
from netagg.softswitch.ports import AfPacketPorts
from netagg.wire import AGG_OFFSET, ETH_HEADER_BYTES, IPV4_UDP

pytestmark = pytest.mark.netns

DEADLINE_S = 10.0
SOL_UDP = 17
UDP_SEGMENT = 103
HOST_IP, SWITCH_IP = "10.213.0.1", "10.213.0.2"
SWITCH_MAC = "02:00:00:00:21:02"
SEGMENT = 1042  # a 256-lane aggregation packet's UDP payload
DATAGRAMS = 4


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


class Link:
    """Namespaces ``host`` and ``switch`` joined by the veth pair ``host_if`` - ``switch_if``."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.host, self.switch = f"netagg-gsoh-{pid}", f"netagg-gsos-{pid}"
        self.host_if, self.switch_if = "gso-h", "gso-s"

    def create(self) -> None:
        _run("ip", "netns", "add", self.host)
        _run("ip", "netns", "add", self.switch)
        try:
            _run("ip", "link", "add", self.host_if, "netns", self.host, "type", "veth", "peer", "name",
                 self.switch_if, "netns", self.switch)  # fmt: skip
            for ns, iface in ((self.host, self.host_if), (self.switch, self.switch_if)):
                _run("ip", "-n", ns, "link", "set", iface, "up")
            _run("ip", "-n", self.host, "addr", "add", f"{HOST_IP}/24", "dev", self.host_if)
            _run("ip", "-n", self.host, "neigh", "add", SWITCH_IP, "lladdr", SWITCH_MAC, "dev", self.host_if)
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        for ns in (self.host, self.switch):  # deleting a namespace deletes its end of the pair, so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)

    def ethtool(self, *args: str) -> None:
        _run("ip", "netns", "exec", self.host, "ethtool", "-K", self.host_if, *args)

    def wait_up(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            out = subprocess.run(["ip", "-n", self.host, "-o", "link", "show", self.host_if], check=True,
                                 capture_output=True, text=True, timeout=20).stdout  # fmt: skip
            if "state UP" in out:
                return
            time.sleep(0.01)
        raise AssertionError(f"{self.host_if} not up before the deadline")


@pytest.fixture
def link() -> Iterator[Link]:
    if shutil.which("ip") is None or shutil.which("ethtool") is None or os.geteuid() != 0:
        pytest.skip("needs root, iproute2 and ethtool")
    created = Link()
    created.create()
    try:
        created.wait_up()
        yield created
    finally:
        created.delete()


def payload(i: int) -> bytes:
    return bytes([i]) * SEGMENT


def send_from_host(link: Link, count: int, gso: bool) -> None:
    with inside(link.host), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST_IP, 40000))
        data = b"".join(payload(i) for i in range(count))
        if gso:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, SEGMENT)
            sock.sendto(data, (SWITCH_IP, 48864))
        else:
            for i in range(count):
                sock.sendto(payload(i), (SWITCH_IP, 48864))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def datagrams(ports: AfPacketPorts, want: int) -> list[bytes]:
    """Frames received on the switch port until ``want`` UDP datagrams to SWITCH_IP arrived, or the deadline."""
    (fd,) = ports.fds()
    got: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < want and time.monotonic() < deadline:
        if ports.native:
            burst = Burst()
            ports.receive_burst(fd, burst)
            frames = [frame for _, frame in burst.frames()]
        else:
            frames = []
            ports.receive(fd, lambda frame, port, into=frames: into.append(bytes(frame)))
        got += [f for f in frames if f[12:14] == b"\x08\x00" and f[30:34] == socket.inet_aton(SWITCH_IP)]
        if not frames:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    return got


def assert_valid(frames: list[bytes], count: int) -> None:
    assert len(frames) == count
    for i, frame in enumerate(frames):
        ip = frame[ETH_HEADER_BYTES : ETH_HEADER_BYTES + 20]
        fields = IPV4_UDP.unpack_from(frame, ETH_HEADER_BYTES)
        total_length, udp_length, udp_check = fields[2], fields[12], fields[13]
        assert len(frame) == AGG_OFFSET + SEGMENT and total_length == 28 + SEGMENT and udp_length == 8 + SEGMENT
        assert checksum(ip) == 0xFFFF, "IPv4 header checksum"
        pseudo = ip[12:20] + bytes([0, 17]) + udp_length.to_bytes(2, "big")
        assert udp_check != 0 and checksum(pseudo + frame[34:]) == 0xFFFF, "UDP checksum"
        assert frame[AGG_OFFSET:] == payload(i)


def test_native_ports_split_a_udp_gso_frame_into_its_datagrams(link: Link) -> None:
    with inside(link.switch):
        ports = AfPacketPorts({1: link.switch_if}, native=True)
    with ports:
        send_from_host(link, DATAGRAMS, gso=True)
        assert_valid(datagrams(ports, DATAGRAMS), DATAGRAMS)
        assert (ports.stats.rx, ports.stats.rx_gso_split, ports.stats.rx_truncated) == (DATAGRAMS, 1, 0)
        # A single datagram leaves its checksum to offload too: the port completes it.
        send_from_host(link, 1, gso=False)
        assert_valid(datagrams(ports, 1), 1)


def test_python_ports_drop_a_gso_frame_unless_the_host_segments(link: Link) -> None:
    with inside(link.switch):
        ports = AfPacketPorts({1: link.switch_if}, native=False)
    with ports:
        assert ports.ring_ports() == [1]
        send_from_host(link, DATAGRAMS, gso=True)
        deadline = time.monotonic() + DEADLINE_S
        (fd,) = ports.fds()
        while ports.stats.rx_truncated == 0 and time.monotonic() < deadline:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            ports.receive(fd, lambda frame, port: None)
        assert ports.stats.rx_truncated == 1 and ports.stats.rx == 0
        # With segmentation off on the host's interface, the host's kernel sends the datagrams one by one.
        link.ethtool("tx-udp-segmentation", "off")
        send_from_host(link, DATAGRAMS, gso=True)
        frames = datagrams(ports, DATAGRAMS)
        assert len(frames) == DATAGRAMS
        assert [f[AGG_OFFSET:] for f in frames] == [payload(i) for i in range(DATAGRAMS)]
