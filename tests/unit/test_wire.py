"""Wire format v2: round trips at the limits, clear errors for malformed buffers, and serial-number tsi order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netagg import wire
from netagg.constants import FLAGS_DEFINED, LANE_COUNTS, SIZE_CODES, WIRE_VERSION, Flag, MsgType

pytestmark = pytest.mark.unit

HALF = 1 << 31
u32 = st.integers(0, wire.U32_MAX)

headers = st.builds(
    wire.AggHeader,
    msg_type=st.sampled_from(list(MsgType)),
    size=st.sampled_from(SIZE_CODES),
    job=st.integers(0, 255),
    tsi=u32,
    slot=st.integers(0, wire.SLOT_MAX),
    set=st.integers(0, 1),
    exp=st.integers(wire.EXP_MIN, wire.EXP_MAX),
    flags=st.sampled_from([0, FLAGS_DEFINED, *(int(f) for f in Flag)]),
    key=u32,
    op=u32,
)


@given(headers, st.data())
def test_round_trip(header: wire.AggHeader, data: st.DataObject) -> None:
    lanes = np.array(
        data.draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=header.lanes, max_size=header.lanes)),
        dtype=np.int32,
    )
    message = wire.encode(header, lanes)
    assert len(message) == wire.message_bytes(header.lanes)
    decoded, got = wire.decode(message)
    assert decoded == header
    np.testing.assert_array_equal(got, lanes)


def test_limits_are_encoded_big_endian() -> None:
    header = wire.AggHeader(
        MsgType.RESULT, 3, 255, 2**32 - 1, wire.SLOT_MAX, 1, -128, FLAGS_DEFINED, key=0xFEDCBA98, op=0x01020304
    )
    message = wire.encode(header, np.arange(256, dtype=np.int32) - 128)
    assert message[:10] == bytes([0x93, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0x07])
    assert message[10:18] == bytes([0xFE, 0xDC, 0xBA, 0x98, 0x01, 0x02, 0x03, 0x04])
    assert message[18:22] == (-128).to_bytes(4, "big", signed=True)


def test_header_is_eighteen_bytes_with_the_version_first() -> None:
    assert wire.HEADER_BYTES == 18
    assert [name for name, _ in wire.HEADER_FIELDS][:4] == ["version", "msg_type", "reserved", "size"]
    assert [name for name, _ in wire.HEADER_FIELDS][-2:] == ["key", "op"]
    assert wire.header_byte0(MsgType.UPDATE, 0) >> 6 == WIRE_VERSION == 2
    assert LANE_COUNTS == (32, 64, 128, 256)


def test_header_struct_packs_what_pack_header_packs() -> None:
    by_codec = bytearray(wire.HEADER_BYTES)
    wire.pack_header(by_codec, 0, msg_type=MsgType.UPDATE, size=2, job=9, tsi=77, slot=300, set=1, exp=-3,
                     flags=int(Flag.ABORT), key=0xA5A5A5A5, op=12345)  # fmt: skip
    raw = wire.header_struct().pack(wire.header_byte0(MsgType.UPDATE, 2), 9, 77, wire.pool_index(300, 1), -3,
                                    int(Flag.ABORT), 0xA5A5A5A5, 12345)  # fmt: skip
    assert raw == bytes(by_codec)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("msg_type", 2, "msg_type"),
        ("size", 4, "size code"),
        ("job", 256, "job"),
        ("tsi", 2**32, "tsi"),
        ("tsi", -1, "tsi"),
        ("slot", 2**15, "slot"),
        ("set", 2, "set"),
        ("exp", 128, "int8"),
        ("exp", -129, "int8"),
        ("flags", 0x08, "undefined"),
        ("key", 2**32, "key"),
        ("key", -1, "key"),
        ("op", 2**32, "op"),
        ("op", -1, "op"),
    ],
)
def test_pack_rejects_out_of_range(field: str, value: int, match: str) -> None:
    fields = dict(msg_type=0, size=0, job=0, tsi=0, slot=0, set=0, exp=0, flags=0, key=0, op=0)
    fields[field] = value
    with pytest.raises(wire.WireError, match=match):
        wire.pack_header(bytearray(wire.HEADER_BYTES), 0, **fields)


def _valid(size: int = 0) -> bytes:
    return wire.encode(wire.AggHeader(MsgType.UPDATE, size, 1, 7, 3, 0, 5, 0, key=11, op=12),
                       np.zeros(32 << size, np.int32))  # fmt: skip


def _byte0(b: bytes, value: int) -> bytes:
    return bytes([value]) + b[1:]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[: wire.HEADER_BYTES - 1], "truncated header"),
        (lambda b: b[:0], "truncated header"),
        (lambda b: b[:-4], "does not match size code"),
        (lambda b: b + b"\0\0\0\0", "does not match size code"),
        (lambda b: _byte0(b, b[0] | 0x08), "reserved"),
        (lambda b: _byte0(b, b[0] & 0x3F), "wire version 0"),
        (lambda b: _byte0(b, b[0] | 0xC0), "wire version 3"),
        (lambda b: _byte0(b, 0xA0), "unknown msg_type"),
        (lambda b: _byte0(b, 0xB0), "unknown msg_type"),
        (lambda b: _byte0(b, 0x84), "size code"),
        (lambda b: b[:9] + b"\x80" + b[10:], "undefined bits"),
        (lambda b: b[:9] + b"\x08" + b[10:], "undefined bits"),
    ],
    ids=[
        "one-byte-short", "empty", "lane-short", "lane-long", "reserved", "version-0", "version-3", "msg-type-2",
        "msg-type-3", "size-4", "flag-0x80", "flag-0x08",
    ],
)  # fmt: skip
def test_decode_rejects_malformed(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireError, match=match):
        wire.decode(bytes(mutate(_valid())))


def test_a_v1_header_is_another_version() -> None:
    """A v1 UPDATE (byte 0 = msg_type:4 reserved:1 size:3) has 0 in the version bits."""
    v1_update = bytes([0x00, 1, 0, 0, 0, 7, 0, 3, 5, 0]) + bytes(4 * 32)
    with pytest.raises(wire.WireError, match="wire version 0, expected 2"):
        wire.decode(v1_update)


@given(st.binary(max_size=1100))
def test_decode_random_bytes_only_raises_wire_error(buf: bytes) -> None:
    try:
        header, lanes = wire.decode(buf)
    except wire.WireError:
        return
    assert len(buf) == wire.message_bytes(header.lanes) and lanes.shape == (header.lanes,)


def test_size_for_lanes() -> None:
    assert [wire.size_for_lanes(n) for n in LANE_COUNTS] == list(SIZE_CODES)
    with pytest.raises(wire.WireError, match="100 lanes per packet is not supported"):
        wire.size_for_lanes(100)


# ------------------------------------------------------------------------------------- serial-number order


@pytest.mark.parametrize(
    ("tsi", "than", "newer"),
    [
        (1, 0, True),
        (0, 0, False),
        (0, 1, False),
        (0, wire.U32_MAX, True),  # the wrap: 0 follows 2^32 - 1
        (wire.U32_MAX, 0, False),
        (3, wire.U32_MAX - 2, True),
        (wire.U32_MAX - 2, 3, False),
        (HALF - 1, 0, True),  # the farthest ahead that is still newer
        (HALF, 0, False),  # exactly half the space: neither is newer than the other
        (0, HALF, False),
        (HALF + 1, 0, False),  # as far behind as 2^31 - 1
        (wire.U32_MAX, HALF, True),
        (HALF - 2, wire.U32_MAX, True),
        (HALF - 1, wire.U32_MAX, False),
    ],
)
def test_tsi_newer_at_the_wrap_and_at_half_the_space(tsi: int, than: int, newer: bool) -> None:
    assert wire.tsi_newer(tsi, than) is newer


@given(u32, st.integers(1, HALF - 1))
def test_every_tsi_up_to_half_the_space_ahead_is_newer(than: int, ahead: int) -> None:
    tsi = (than + ahead) & wire.U32_MAX
    assert wire.tsi_newer(tsi, than)
    assert not wire.tsi_newer(than, tsi)


@given(u32, u32)
def test_tsi_newer_is_antisymmetric(a: int, b: int) -> None:
    """At most one of two tsis is newer; neither only when they are equal or exactly 2^31 apart."""
    assert not (wire.tsi_newer(a, b) and wire.tsi_newer(b, a))
    if not wire.tsi_newer(a, b) and not wire.tsi_newer(b, a):
        assert (a - b) & wire.U32_MAX in (0, HALF)
