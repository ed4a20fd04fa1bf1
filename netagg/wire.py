"""Wire format v2: the aggregation header and payload, defined once.

Layout (big-endian), after Ethernet II / IPv4 without options / UDP::

    byte 0       version:2 | msg_type:2 | reserved:1 | size:3     version = WIRE_VERSION (2)
    byte 1       job                      uint8
    bytes 2-5    tsi                      uint32   chunk sequence number (RESULT echoes it)
    bytes 6-7    set:1 | slot:15          uint16   pool_index
    byte 8       exp                      int8     block exponent (see docs/protocol.md)
    byte 9       flags                    uint8    bit 0 NONFINITE, bit 1 ABORT, bit 2 MISMATCH
    bytes 10-13  key                      uint32   UPDATE: the sender's key; RESULT: the receiver's key
    bytes 14-17  op                       uint32   which collective the chunk belongs to (RESULT: the round's)
    payload      (32 << size) x int32, two's complement, big-endian

``HEADER_FIELDS`` is the bit-level description the P4 header is generated from and checked against;
``pack_header``/``unpack_header`` are the byte-level codec every Python component uses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

from netagg.constants import FLAGS_DEFINED, LANE_BYTES, LANES_PER_BLOCK, SIZE_CODES, WIRE_VERSION, MsgType

#: (name, width in bits) of every header field, in wire order. The P4 ``agg_h`` header is generated
#: from this list; tests compare it with the compiled BMv2 JSON.
HEADER_FIELDS: Final[tuple[tuple[str, int], ...]] = (
    ("version", 2),
    ("msg_type", 2),
    ("reserved", 1),
    ("size", 3),
    ("job", 8),
    ("tsi", 32),
    ("set", 1),
    ("slot", 15),
    ("exp", 8),
    ("flags", 8),
    ("key", 32),
    ("op", 32),
)

_HEADER: Final = struct.Struct("!BBIHbBII")
HEADER_BYTES: Final[int] = _HEADER.size
assert HEADER_BYTES * 8 == sum(width for _, width in HEADER_FIELDS)

#: numpy dtype of payload lanes on the wire.
LANE_DTYPE: Final = np.dtype(">i4")

ETH_HEADER_BYTES: Final = 14
IPV4_HEADER_BYTES: Final = 20  # aggregation packets carry no IPv4 options
UDP_HEADER_BYTES: Final = 8
#: Offset of the aggregation header in an Ethernet frame.
AGG_OFFSET: Final = ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES
#: ``struct`` codes of an IPv4 header without options: version/IHL, TOS, total length, id, flags/fragment offset,
#: TTL, protocol, checksum, source, destination.
IPV4_FORMAT: Final = "BBHHHBBHII"
#: ``struct`` codes of a UDP header: source port, destination port, length, checksum.
UDP_FORMAT: Final = "HHHH"
#: The IPv4 and UDP headers in front of the aggregation header, packed or unpacked in one call.
IPV4_UDP: Final = struct.Struct("!" + IPV4_FORMAT + UDP_FORMAT)
assert IPV4_UDP.size == IPV4_HEADER_BYTES + UDP_HEADER_BYTES

SLOT_MAX: Final = (1 << 15) - 1
EXP_MIN: Final = -128
EXP_MAX: Final = 127
U32_MAX: Final = 0xFFFFFFFF


class WireError(ValueError):
    """A buffer is not a valid v2 aggregation message."""


def lanes_for_size(size: int) -> int:
    """Number of int32 lanes a payload of size code ``size`` carries."""
    if size not in SIZE_CODES:
        raise WireError(f"size code {size} is not one of {SIZE_CODES}")
    return LANES_PER_BLOCK << size


def size_for_lanes(lanes: int) -> int:
    """Size code for a payload of ``lanes`` lanes; raises for counts the switch does not support."""
    for code in SIZE_CODES:
        if LANES_PER_BLOCK << code == lanes:
            return code
    supported = ", ".join(str(LANES_PER_BLOCK << c) for c in SIZE_CODES)
    raise WireError(f"{lanes} lanes per packet is not supported (choose one of {supported})")


def message_bytes(lanes: int) -> int:
    """UDP payload length of a message with ``lanes`` lanes."""
    return HEADER_BYTES + lanes * LANE_BYTES


@dataclass(frozen=True, slots=True)
class AggHeader:
    """Decoded aggregation header."""

    msg_type: MsgType
    size: int
    job: int
    tsi: int
    slot: int
    set: int
    exp: int
    flags: int
    key: int = 0
    op: int = 0

    @property
    def lanes(self) -> int:
        return LANES_PER_BLOCK << self.size


def pack_header(
    buf: bytearray | memoryview,
    offset: int,
    *,
    msg_type: int,
    size: int,
    job: int,
    tsi: int,
    slot: int,
    set: int,  # noqa: A002 - the protocol's own name for the copy bit
    exp: int,
    flags: int = 0,
    key: int = 0,
    op: int = 0,
) -> None:
    """Write a header into ``buf`` at ``offset``; raises WireError for out-of-range fields."""
    if msg_type not in (MsgType.UPDATE, MsgType.RESULT):
        raise WireError(f"msg_type {msg_type} is not UPDATE (0) or RESULT (1)")
    if size not in SIZE_CODES:
        raise WireError(f"size code {size} is not one of {SIZE_CODES}")
    if not 0 <= job <= 0xFF:
        raise WireError(f"job {job} does not fit in 8 bits")
    if not 0 <= tsi <= 0xFFFFFFFF:
        raise WireError(f"tsi {tsi} does not fit in 32 bits")
    if not 0 <= slot <= SLOT_MAX:
        raise WireError(f"slot {slot} does not fit in 15 bits")
    if set not in (0, 1):
        raise WireError(f"set {set} is not 0 or 1")
    if not EXP_MIN <= exp <= EXP_MAX:
        raise WireError(f"exponent {exp} does not fit in int8")
    if flags & ~FLAGS_DEFINED & 0xFF or not 0 <= flags <= 0xFF:
        raise WireError(f"flags {flags:#x} has undefined bits (defined: {FLAGS_DEFINED:#x})")
    if not 0 <= key <= U32_MAX:
        raise WireError(f"key {key} does not fit in 32 bits")
    if not 0 <= op <= U32_MAX:
        raise WireError(f"op {op} does not fit in 32 bits")
    _HEADER.pack_into(buf, offset, header_byte0(msg_type, size), job, tsi, (set << 15) | slot, exp, flags, key, op)


def unpack_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> AggHeader:
    """Decode and validate the header at ``offset``; raises WireError for any malformed field."""
    if len(buf) - offset < HEADER_BYTES:
        raise WireError(f"truncated header: {len(buf) - offset} bytes, need {HEADER_BYTES}")
    b0, job, tsi, pool_index, exp, flags, key, op = _HEADER.unpack_from(buf, offset)
    version = b0 >> 6
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version}, expected {WIRE_VERSION}")
    kind = (b0 >> 4) & 0x03
    if kind not in (MsgType.UPDATE, MsgType.RESULT):
        raise WireError(f"unknown msg_type {kind}")
    if b0 & 0x08:
        raise WireError("reserved header bit is set")
    size = b0 & 0x07
    if size not in SIZE_CODES:
        raise WireError(f"size code {size} is not one of {SIZE_CODES}")
    if flags & ~FLAGS_DEFINED:
        raise WireError(f"flags {flags:#x} has undefined bits (defined: {FLAGS_DEFINED:#x})")
    return AggHeader(MsgType(kind), size, job, tsi, pool_index & SLOT_MAX, pool_index >> 15, exp, flags, key, op)


def decode(message: bytes | bytearray | memoryview) -> tuple[AggHeader, np.ndarray]:
    """Decode a whole UDP payload into its header and a read-only big-endian int32 lane view."""
    header = unpack_header(message)
    expected = message_bytes(header.lanes)
    if len(message) != expected:
        raise WireError(
            f"payload length {len(message) - HEADER_BYTES} bytes does not match size code {header.size} "
            f"({header.lanes} lanes = {header.lanes * LANE_BYTES} bytes)"
        )
    lanes = np.frombuffer(message, dtype=LANE_DTYPE, count=header.lanes, offset=HEADER_BYTES)
    return header, lanes


def encode(header: AggHeader, lanes: np.ndarray) -> bytes:
    """Encode a header and its lanes (any integer array of the right length) into a UDP payload."""
    if lanes.shape != (header.lanes,):
        raise WireError(f"lanes shape {lanes.shape} does not match size code {header.size} ({header.lanes})")
    buf = bytearray(message_bytes(header.lanes))
    pack_header(
        buf,
        0,
        msg_type=header.msg_type,
        size=header.size,
        job=header.job,
        tsi=header.tsi,
        slot=header.slot,
        set=header.set,
        exp=header.exp,
        flags=header.flags,
        key=header.key,
        op=header.op,
    )
    np.frombuffer(buf, dtype=LANE_DTYPE, offset=HEADER_BYTES)[:] = lanes
    return bytes(buf)


def header_struct() -> struct.Struct:
    """The header's precompiled ``struct.Struct``: (byte 0, job, tsi, pool_index, exp, flags, key, op) as ints.

    For per-packet paths that validate their constant fields once (with ``pack_header``) and then pack or
    unpack raw ints; build byte 0 and pool_index with ``header_byte0`` and ``pool_index``.
    """
    return _HEADER


def header_byte0(msg_type: int, size: int) -> int:
    """Byte 0 of a header as ``header_struct`` packs it: version, msg_type, reserved bit clear, size code."""
    return (WIRE_VERSION << 6) | (msg_type << 4) | size


def pool_index(slot: int, set: int) -> int:  # noqa: A002 - the protocol's own name for the copy bit
    """The 16-bit pool_index field (set:1 | slot:15) as ``header_struct`` packs it."""
    return (set << 15) | slot


def tsi_newer(tsi: int, than: int) -> bool:
    """Whether ``tsi`` is later than ``than`` in 32-bit serial-number order (RFC 1982).

    A tsi is newer when it lies 1 .. 2**31 - 1 steps ahead, modulo 2**32, so a job's stream may run past 2**32
    chunks. The switch opens a new round on a complete slot copy only for a newer tsi (docs/protocol.md).
    """
    return 0 < ((tsi - than) & U32_MAX) < (1 << 31)
