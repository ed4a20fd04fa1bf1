"""Frames the suite sends and the checks on the frames it receives.

The aggregation header and lanes always come from ``netagg.wire`` (``encode``/``decode``); scapy only wraps
them in Ethernet/IPv4/UDP. Malformed headers are made by overwriting single fields of a valid frame at the bit
positions ``netagg.wire.HEADER_FIELDS`` gives, never by a second description of the header. The one exception
is ``v1_update_payload``: wire format v1 is described nowhere else any more, and the switch must reject it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from netagg.constants import AGG_UDP_PORT, MsgType
from netagg.wire import (
    AGG_OFFSET,
    ETH_HEADER_BYTES,
    HEADER_BYTES,
    HEADER_FIELDS,
    IPV4_HEADER_BYTES,
    LANE_DTYPE,
    AggHeader,
    WireError,
    decode,
    encode,
    size_for_lanes,
)

INT32 = np.dtype(np.int32)
#: The ``op`` every UPDATE the suite sends carries unless a test gives another (not 0, so that a RESULT that
#: loses it shows).
OP = 0x5EED_0001


@dataclass(frozen=True)
class Endpoint:
    """An Ethernet/IPv4/UDP endpoint: a worker, or the switch's aggregation address."""

    mac: str
    ip: str
    udp_port: int


def wrap_int32(values: np.ndarray) -> np.ndarray:
    """int64 values reduced to int32 with two's-complement wrap-around."""
    return ((values.astype(np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(INT32)


def update_frame(
    src: Endpoint,
    agg: Endpoint,
    *,
    job: int,
    tsi: int,
    slot: int,
    set: int,
    lanes: np.ndarray,
    key: int,
    op: int = OP,
    exp: int = 0,
    flags: int = 0,
    msg_type: MsgType = MsgType.UPDATE,
    udp_checksum: int | None = None,
) -> bytes:
    """An UPDATE (or, with ``msg_type``, any well-formed message) from ``src`` to the switch."""
    header = AggHeader(msg_type, size_for_lanes(len(lanes)), job, tsi, slot, set, exp, flags, key, op)
    return udp_frame(src, agg, encode(header, lanes), udp_checksum=udp_checksum)


def v1_update_payload(*, job: int, tsi: int, slot: int, set: int, lanes: np.ndarray) -> bytes:
    """An UPDATE in wire format v1: a 10-byte header (msg_type:4 reserved:1 size:3, job, tsi, set:1 slot:15,
    exp, flags), without key and op, then the lanes. Its version bits (the top two of byte 0) are 0."""
    header = struct.pack("!BBIHbB", size_for_lanes(len(lanes)), job, tsi, set << 15 | slot, 0, 0)
    return header + np.asarray(lanes, dtype=LANE_DTYPE).tobytes()


def udp_frame(src: Endpoint, agg: Endpoint, payload: bytes, *, udp_checksum: int | None = None) -> bytes:
    """``payload`` in Ethernet/IPv4/UDP from ``src`` to the switch's aggregation port.

    The UDP checksum is computed unless ``udp_checksum`` gives one (0: none, which UPDATEs may carry).
    """
    frame = (
        Ether(src=src.mac, dst=agg.mac)
        / IP(src=src.ip, dst=agg.ip, ttl=64, id=0x1234)
        / UDP(sport=src.udp_port, dport=AGG_UDP_PORT, chksum=udp_checksum)
        / Raw(payload)
    )
    return bytes(frame)


def _field_bits(name: str) -> tuple[int, int]:
    """(bit offset from the header's first bit, width) of header field ``name``."""
    offset = 0
    for field_name, width in HEADER_FIELDS:
        if field_name == name:
            return offset, width
        offset += width
    raise KeyError(f"no header field {name!r} in {[n for n, _ in HEADER_FIELDS]}")


def set_header_field(frame: bytes, name: str, value: int) -> bytes:
    """``frame`` with aggregation header field ``name`` overwritten by raw ``value`` (no validation)."""
    offset, width = _field_bits(name)
    if not 0 <= value < (1 << width):
        raise ValueError(f"{value} does not fit field {name} ({width} bits)")
    total = HEADER_BYTES * 8
    raw = int.from_bytes(frame[AGG_OFFSET:AGG_OFFSET + HEADER_BYTES], "big")
    shift = total - offset - width
    raw = (raw & ~(((1 << width) - 1) << shift)) | (value << shift)
    return frame[:AGG_OFFSET] + raw.to_bytes(HEADER_BYTES, "big") + frame[AGG_OFFSET + HEADER_BYTES:]


def ipv4_checksum_ok(header: bytes) -> bool:
    """True when an IPv4 header's checksum field is correct (the one's-complement sum is 0xFFFF)."""
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@dataclass(frozen=True)
class Result:
    """A decoded RESULT frame."""

    eth_dst: str
    eth_src: str
    ip_src: str
    ip_dst: str
    udp_sport: int
    udp_dport: int
    header: AggHeader
    lanes: np.ndarray


def parse_result(frame: bytes) -> Result:
    """Decode a frame the switch sent a worker, asserting every fixed property of a RESULT's outer headers."""
    pkt = Ether(frame)
    assert IP in pkt and UDP in pkt, f"not IPv4/UDP: {pkt.summary()}"
    ip, udp = pkt[IP], pkt[UDP]
    ip_bytes = frame[ETH_HEADER_BYTES:ETH_HEADER_BYTES + IPV4_HEADER_BYTES]
    assert ip.ihl == 5, f"IPv4 header has options (ihl {ip.ihl})"
    assert ipv4_checksum_ok(ip_bytes), f"bad IPv4 checksum {ip.chksum:#06x} in {ip_bytes.hex()}"
    assert ip.len == len(frame) - ETH_HEADER_BYTES, f"IPv4 total length {ip.len}, frame has {len(frame)} bytes"
    assert udp.len == ip.len - IPV4_HEADER_BYTES, f"UDP length {udp.len} vs IPv4 total length {ip.len}"
    assert udp.chksum == 0, f"RESULT UDP checksum is {udp.chksum:#06x}, must be 0"
    try:
        header, lanes = decode(frame[AGG_OFFSET:])
    except WireError as exc:
        raise AssertionError(f"RESULT does not decode: {exc}") from exc
    return Result(pkt.dst, pkt.src, ip.src, ip.dst, udp.sport, udp.dport, header, lanes.astype(INT32))


def assert_result(
    frame: bytes,
    *,
    worker: Endpoint,
    agg: Endpoint,
    job: int,
    tsi: int,
    slot: int,
    set: int,
    exp: int,
    flags: int,
    key: int,
    op: int = OP,
    lanes: np.ndarray,
) -> None:
    """Assert that ``frame`` is exactly the RESULT the protocol prescribes for ``worker`` (whose key is ``key``)."""
    r = parse_result(frame)
    got = (r.eth_dst, r.eth_src, r.ip_dst, r.ip_src, r.udp_dport, r.udp_sport)
    want = (worker.mac, agg.mac, worker.ip, agg.ip, worker.udp_port, AGG_UDP_PORT)
    assert got == want, f"RESULT addressing (dst mac, src mac, dst ip, src ip, dst port, src port): {got} != {want}"
    h = r.header
    got_h = (h.msg_type, h.job, h.tsi, h.slot, h.set, h.exp, h.flags, h.key, h.op, h.lanes)
    want_h = (MsgType.RESULT, job, tsi, slot, set, exp, flags, key, op, len(lanes))
    assert got_h == want_h, (
        f"RESULT header (type, job, tsi, slot, set, exp, flags, key, op, lanes): {got_h} != {want_h}"
    )
    if not np.array_equal(r.lanes, lanes):
        bad = np.flatnonzero(r.lanes != lanes)
        raise AssertionError(
            f"RESULT lanes differ at {len(bad)} positions, first {bad[:5].tolist()}: "
            f"got {r.lanes[bad[:5]].tolist()}, want {np.asarray(lanes)[bad[:5]].tolist()}"
        )


def dst_port_of(frame: bytes) -> int:
    """UDP destination port of an IPv4/UDP frame (which worker a RESULT is for)."""
    return int(Ether(frame)[UDP].dport)


def arp_request(sender: Endpoint, target_ip: str) -> bytes:
    return bytes(
        Ether(src=sender.mac, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=sender.mac, psrc=sender.ip, hwdst="00:00:00:00:00:00", pdst=target_ip)
    )


def plain_frame(src_mac: str, dst_mac: str, tag: int) -> bytes:
    """An ordinary IPv4/UDP frame (not to the aggregation port) whose ``tag`` identifies it."""
    return bytes(
        Ether(src=src_mac, dst=dst_mac)
        / IP(src="192.0.2.1", dst="192.0.2.2", ttl=64)
        / UDP(sport=40000, dport=9)
        / Raw(tag.to_bytes(4, "big") * 8)
    )


def ip_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def mac_int(address: str) -> int:
    return int(address.replace(":", ""), 16)
