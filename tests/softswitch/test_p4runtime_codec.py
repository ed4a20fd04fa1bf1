"""P4Runtime byte-string and Uint128 encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netagg.softswitch.codec import EncodingError, decode_u128, decode_uint, encode_u128, encode_uint

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("data", "bitwidth", "value"),
    [
        (b"\x00", 8, 0),
        (b"\x01\xff", 9, 0x1FF),  # canonical 9-bit value
        (b"\x00\x00\x00\x05", 9, 5),  # zero padding beyond the bitwidth's bytes is allowed
        (b"\x0a\x00\x00\x01", 32, 0x0A000001),
        (b"\x00" * 8 + b"\x01", 48, 1),
    ],
)
def test_decode_accepts_canonical_and_padded(data: bytes, bitwidth: int, value: int) -> None:
    assert decode_uint(data, bitwidth) == value


@pytest.mark.parametrize(
    ("data", "bitwidth"),
    # The spec's examples of invalid encodings (section "Bytestrings").
    [(b"\x01\x63", 8), (b"", 8), (b"\x01\x00\x63", 16), (b"\x10\x63", 12), (b"\x02\x00", 9)],
)
def test_decode_refuses_values_that_do_not_fit(data: bytes, bitwidth: int) -> None:
    with pytest.raises(EncodingError):
        decode_uint(data, bitwidth, "port")


def test_encode_is_canonical() -> None:
    assert encode_uint(0) == b"\x00"
    assert encode_uint(0x1FF, 9) == b"\x01\xff"
    assert encode_uint(0x0A000001, 32) == b"\x0a\x00\x00\x01"
    with pytest.raises(EncodingError):
        encode_uint(0x200, 9)
    with pytest.raises(EncodingError):
        encode_uint(-1)


@given(
    st.integers(min_value=1, max_value=128).flatmap(
        lambda w: st.tuples(st.just(w), st.integers(min_value=0, max_value=(1 << w) - 1), st.integers(0, 4))
    )
)
def test_round_trip_with_any_padding(case: tuple[int, int, int]) -> None:
    bitwidth, value, pad = case
    data = encode_uint(value, bitwidth)
    assert decode_uint(data, bitwidth) == value
    assert decode_uint(b"\x00" * pad + data, bitwidth) == value


def test_u128() -> None:
    for value in (0, 1, (1 << 64) + 5, (1 << 128) - 1):
        assert decode_u128(encode_u128(value)) == value
    with pytest.raises(EncodingError):
        encode_u128(1 << 128)
