"""The suite's own frame helpers, checked against netagg.wire (no root, no target)."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.constants import MsgType
from netagg.wire import AGG_OFFSET, HEADER_FIELDS, WireError, unpack_header

from .frames import (
    Endpoint,
    ipv4_checksum_ok,
    parse_result,
    set_header_field,
    update_frame,
    v1_update_payload,
    wrap_int32,
)

pytestmark = pytest.mark.unit

SRC = Endpoint("02:00:00:00:00:01", "10.0.0.1", 40000)
AGG = Endpoint("02:00:00:00:00:02", "10.0.0.2", 0)


def _frame(**kw: int) -> bytes:
    fields = {"job": 3, "tsi": 0x01020304, "slot": 77, "set": 1, "exp": -5, "flags": 1, "key": 0xCAFEF00D,
              "op": 0x0BADCAFE}
    fields.update(kw)
    return update_frame(SRC, AGG, lanes=np.arange(32, dtype=np.int32), **fields)


@pytest.mark.parametrize(
    "name, value, attr",
    [("job", 200, "job"), ("tsi", 0xFFFFFFFE, "tsi"), ("slot", 1023, "slot"), ("set", 0, "set"), ("size", 2, "size"),
     ("key", 0x12345678, "key"), ("op", 0xFFFFFFFF, "op")],
)
def test_set_header_field_changes_only_that_field(name: str, value: int, attr: str) -> None:
    before = unpack_header(_frame(), AGG_OFFSET)
    after = unpack_header(set_header_field(_frame(), name, value), AGG_OFFSET)
    assert getattr(after, attr) == value
    for other in ("msg_type", "job", "tsi", "slot", "set", "exp", "flags", "size", "key", "op"):
        if other != attr:
            assert getattr(after, other) == getattr(before, other), other


@pytest.mark.parametrize("name, value", [("reserved", 1), ("msg_type", 3), ("flags", 0x80), ("version", 0),
                                         ("version", 3)])
def test_set_header_field_makes_frames_the_codec_rejects(name: str, value: int) -> None:
    with pytest.raises(WireError):
        unpack_header(set_header_field(_frame(), name, value), AGG_OFFSET)


def test_set_header_field_covers_every_field_and_checks_width() -> None:
    for name, width in HEADER_FIELDS:
        set_header_field(_frame(), name, (1 << width) - 1)
        with pytest.raises(ValueError):
            set_header_field(_frame(), name, 1 << width)


def test_wrap_int32() -> None:
    values = np.array([2**31, -(2**31) - 1, 2**32, -1, 5], dtype=np.int64)
    assert wrap_int32(values).tolist() == [-(2**31), 2**31 - 1, 0, -1, 5]


def test_parse_result_rejects_a_nonzero_udp_checksum_and_accepts_a_result() -> None:
    update = _frame()
    assert ipv4_checksum_ok(update[14:34])
    with pytest.raises(AssertionError, match="UDP checksum"):
        parse_result(update)  # scapy filled in a UDP checksum
    result = update_frame(SRC, AGG, job=3, tsi=1, slot=2, set=0, lanes=np.zeros(32, dtype=np.int32), key=5,
                          msg_type=MsgType.RESULT)
    zeroed = result[:40] + b"\0\0" + result[42:]
    assert parse_result(zeroed).header.msg_type == MsgType.RESULT


def test_v1_payload_is_ten_header_bytes_the_codec_rejects_as_another_version() -> None:
    payload = v1_update_payload(job=3, tsi=7, slot=5, set=1, lanes=np.arange(32, dtype=np.int32))
    assert len(payload) == 10 + 4 * 32 and payload[0] >> 6 == 0
    with pytest.raises(WireError, match="wire version 0"):
        unpack_header(payload)
