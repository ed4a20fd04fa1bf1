"""P4Runtime value encoding: unsigned integers as byte strings, and 128-bit election ids.

P4Runtime carries every match key and action parameter as a big-endian byte string. The canonical form is
the shortest string that holds the value (one zero byte for 0); a server must also accept longer, zero-padded
strings as long as the value fits the P4Info bitwidth (P4Runtime spec, "Bytestrings"). Reads answer in
canonical form.
"""

from __future__ import annotations

from finsy.proto import p4r


class EncodingError(ValueError):
    """A byte string that does not encode a value of the expected bitwidth."""


def decode_uint(data: bytes, bitwidth: int, what: str = "value") -> int:
    """Decode a canonical or zero-padded byte string; raise EncodingError if it is empty or too wide."""
    if not data:
        raise EncodingError(f"{what}: empty byte string (a value needs at least one byte)")
    value = int.from_bytes(data, "big")
    if value.bit_length() > bitwidth:
        raise EncodingError(f"{what}: value 0x{data.hex()} does not fit in {bitwidth} bits")
    return value


def encode_uint(value: int, bitwidth: int | None = None) -> bytes:
    """Canonical byte string of a non-negative int (checked against ``bitwidth`` when given)."""
    if value < 0:
        raise EncodingError(f"negative value {value} cannot be encoded")
    if bitwidth is not None and value.bit_length() > bitwidth:
        raise EncodingError(f"value {value} does not fit in {bitwidth} bits")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def decode_u128(msg: p4r.Uint128) -> int:
    """Python int of a P4Runtime Uint128 (election ids)."""
    return (msg.high << 64) | msg.low


def encode_u128(value: int) -> p4r.Uint128:
    """P4Runtime Uint128 of a non-negative int below 2**128."""
    if not 0 <= value < 1 << 128:
        raise EncodingError(f"{value} is not a 128-bit unsigned value")
    return p4r.Uint128(high=value >> 64, low=value & ((1 << 64) - 1))
