"""Wire format v1: round trips at the limits and clear errors for malformed buffers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netagg import wire
from netagg.constants import FLAGS_DEFINED, LANE_COUNTS, SIZE_CODES, MsgType

pytestmark = pytest.mark.unit

headers = st.builds(
    wire.AggHeader,
    msg_type=st.sampled_from(list(MsgType)),
    size=st.sampled_from(SIZE_CODES),
    job=st.integers(0, 255),
    tsi=st.integers(0, 2**32 - 1),
    slot=st.integers(0, wire.SLOT_MAX),
    set=st.integers(0, 1),
    exp=st.integers(wire.EXP_MIN, wire.EXP_MAX),
    flags=st.sampled_from([0, FLAGS_DEFINED]),
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
    header = wire.AggHeader(MsgType.RESULT, 3, 255, 2**32 - 1, wire.SLOT_MAX, 1, -128, 1)
    message = wire.encode(header, np.arange(256, dtype=np.int32) - 128)
    assert message[:10] == bytes([0x13, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0x01])
    assert message[10:14] == (-128).to_bytes(4, "big", signed=True)


def test_header_fields_cover_ten_bytes() -> None:
    assert wire.HEADER_BYTES == 10
    assert [name for name, _ in wire.HEADER_FIELDS][:3] == ["msg_type", "reserved", "size"]
    assert LANE_COUNTS == (32, 64, 128, 256)


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
        ("flags", 2, "undefined"),
    ],
)
def test_pack_rejects_out_of_range(field: str, value: int, match: str) -> None:
    fields = dict(msg_type=0, size=0, job=0, tsi=0, slot=0, set=0, exp=0, flags=0)
    fields[field] = value
    with pytest.raises(wire.WireError, match=match):
        wire.pack_header(bytearray(10), 0, **fields)


def _valid(size: int = 0) -> bytearray:
    return bytearray(wire.encode(wire.AggHeader(MsgType.UPDATE, size, 1, 7, 3, 0, 5, 0),
                                 np.zeros(32 << size, np.int32)))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:9], "truncated header"),
        (lambda b: b[:0], "truncated header"),
        (lambda b: b[:-4], "does not match size code"),
        (lambda b: b + b"\0\0\0\0", "does not match size code"),
        (lambda b: bytes([b[0] | 0x08]) + b[1:], "reserved"),
        (lambda b: bytes([0x20]) + b[1:], "unknown msg_type"),
        (lambda b: bytes([0xF0]) + b[1:], "unknown msg_type"),
        (lambda b: bytes([0x04]) + b[1:], "size code"),
        (lambda b: b[:9] + b"\x80" + b[10:], "undefined bits"),
    ],
)
def test_decode_rejects_malformed(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireError, match=match):
        wire.decode(bytes(mutate(bytes(_valid()))))


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
