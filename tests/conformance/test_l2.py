"""Ordinary traffic: L2 forwarding, flooding (never back out of the ingress port) and ARP replies."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import ARP, Ether

from . import program
from .frames import Endpoint, arp_request, plain_frame
from .harness import PORTS, SwitchUnderTest

pytestmark = pytest.mark.netns

HOST_A = Endpoint(mac="02:00:00:aa:00:01", ip="10.0.0.1", udp_port=0)
HOST_B_MAC = "02:00:00:bb:00:02"
GATEWAY = Endpoint(mac="02:00:00:ee:00:01", ip="10.0.0.254", udp_port=0)


def test_known_destination_is_forwarded_to_its_port_only(sut: SwitchUnderTest) -> None:
    sut.session.insert([program.l2_entry(HOST_B_MAC, 3)])
    frame = plain_frame(HOST_A.mac, HOST_B_MAC, tag=1)
    sut.ports.send(1, frame)
    got = sut.ports.expect({3: 1})
    assert got[3] == [frame], "forwarded frame must be unchanged"


@pytest.mark.parametrize("dst", ["ff:ff:ff:ff:ff:ff", "02:00:00:cc:00:09"], ids=["broadcast", "unknown-unicast"])
@pytest.mark.parametrize("ingress", [1, 4])
def test_flooded_to_every_port_but_the_ingress(sut: SwitchUnderTest, dst: str, ingress: int) -> None:
    sut.session.insert([program.l2_entry(HOST_B_MAC, 3)])  # a table with other entries still misses
    frame = plain_frame(HOST_A.mac, dst, tag=2)
    sut.ports.send(ingress, frame)
    got = sut.ports.expect({p: 1 for p in PORTS if p != ingress})
    for port in PORTS:
        assert got[port] == ([] if port == ingress else [frame]), f"port {port}"


def test_arp_request_for_a_switch_address_is_answered_on_the_ingress_port(sut: SwitchUnderTest) -> None:
    sut.session.insert([program.arp_entry(GATEWAY.ip, GATEWAY.mac)])
    sut.ports.send(2, arp_request(HOST_A, GATEWAY.ip))
    reply = Ether(sut.ports.expect({2: 1})[2][0])
    assert ARP in reply, reply.summary()
    arp = reply[ARP]
    got = (reply.dst, reply.src, arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst)
    want = (HOST_A.mac, GATEWAY.mac, 2, GATEWAY.mac, GATEWAY.ip, HOST_A.mac, HOST_A.ip)
    assert got == want, "ARP reply (eth dst, eth src, op, sha, spa, tha, tpa)"


def test_arp_request_for_another_address_is_flooded(sut: SwitchUnderTest) -> None:
    sut.session.insert([program.arp_entry(GATEWAY.ip, GATEWAY.mac)])
    request = arp_request(HOST_A, "10.0.0.77")
    sut.ports.send(2, request)
    got = sut.ports.expect({p: 1 for p in PORTS if p != 2})
    assert all(got[p] == [request] for p in PORTS if p != 2)
