"""Block floating point quantization, as SwitchML: int32 lanes with one shared exponent per block.

A tensor is cut into blocks of L lanes (one block = one packet's payload). For a block with maximum magnitude M:

* Its exponent is the smallest integer e with M < 2**e, read from the float's exponent bits (``frexp``), not from
  a logarithm. An all-zero block has exponent ``EXP_MIN`` (-128): it constrains nobody. Denormal maxima give
  e < -128 and are clamped up to -128; a larger exponent is always safe, it only costs precision, and a denormal
  still keeps at least 24 - k significant bits of the block's largest value.
* Blocks holding inf or NaN, or a value with M >= 2**127 (e = 128 does not fit the wire's int8), are *non-finite*:
  they are flagged, quantize to zeros, and the summed block comes back all-NaN on every worker. Values that large
  are treated like inf because an n-way sum of them overflows float32 anyway; this matches what AMP's overflow
  check expects.

Every worker scales a block by ``2**(30 - k - E)``, where E is the shared exponent (the maximum of the workers'
exponents for that block, carried back by the switch) and ``k = ceil(log2(n))`` for n workers. Then
``|x * 2**s| < 2**(30 - k)``, so after rounding each lane is at most ``2**(30 - k)`` in magnitude and the sum of n
lanes is at most ``2**30``: the switch's int32 sum can never wrap.

Error bound (tested): with ``S = sum_i x_i`` the exact sum of the n workers' values for one lane,

    |dequantized - S| <= n * 2**(E + k - 31) * (1 + 2**-24) + 2**-24 * |S|

i.e. half a quantization step per worker, plus the final rounding to float32.

Arithmetic is float32 multiplication by powers of two (exact) and round-half-to-even; numpy and torch give
bit-identical results. The scale factor is applied as two power-of-two factors when it would leave float32's range.

The float path exists twice, computing the same bits: :func:`block_exponents`, :func:`quantize` and
:func:`dequantize` run the compiled kernels of ``netagg.host_agent._native`` (sources in host_agent/native/), one
pass over memory each, writing or reading big-endian lanes in packet buffers directly (:func:`lane_view`); the
``*_reference`` functions are the numpy implementation, the executable specification the kernels are tested
against. Arguments the kernels do not take as they are (other dtypes, lanes not adjacent in memory, an output
overlapping an input) go to the reference, which computes the same result or raises the proper error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from netagg.wire import EXP_MAX, EXP_MIN, LANE_DTYPE

try:
    from netagg.host_agent import _native
except ImportError as exc:
    raise ImportError(
        "netagg.host_agent._native (the compiled quantizer) is missing or was built for another Python: run "
        "`make install` in the repository root to build it"
    ) from exc

#: Exponent at or above which a block is treated as non-finite (2**127 <= M).
EXP_OVERFLOW = EXP_MAX + 1

#: Bits of headroom below int32's sign bit that the scaling keeps (one spare bit: no clipping needed).
_MAG_BITS = 30

_INT32_MAX = (1 << 31) - 1


class QuantizationError(ValueError):
    """Input the quantizer cannot represent faithfully (e.g. an int32 sum that could wrap)."""


def headroom_bits(num_workers: int) -> int:
    """k = ceil(log2(n)): bits reserved so that the sum of n lanes cannot overflow."""
    if num_workers < 1:
        raise QuantizationError(f"number of workers must be >= 1, got {num_workers}")
    return (num_workers - 1).bit_length()


def scale_base(num_workers: int) -> int:
    """30 - k: the scale of a block with shared exponent E is 2**(scale_base - E) (the compiled kernels' argument)."""
    return _MAG_BITS - headroom_bits(num_workers)


def scale_shift(shared_exps: np.ndarray, num_workers: int) -> np.ndarray:
    """Per-block binary scale s = 30 - k - E (int32), so that a lane is x * 2**s."""
    return (scale_base(num_workers) - np.asarray(shared_exps, dtype=np.int32)).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------------
# numpy reference: the executable specification of the float path (the compiled kernels must give its bits).


def block_exponents_reference(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference of :func:`block_exponents`."""
    blocks = _as_blocks(blocks)
    if blocks.shape[1] == 0:
        return np.full(len(blocks), EXP_MIN, np.int8), np.zeros(len(blocks), bool)
    # |x| by clearing the sign bit of the IEEE representation: for non-negative floats the integer order is the
    # float order, and every inf/NaN pattern is >= 0x7F800000. One integer max per row is much cheaper than
    # float max/min (which must propagate NaN) and needs no |x| temporary in float.
    magnitude = np.bitwise_and(blocks.view(np.int32), 0x7FFFFFFF)
    maxbits = magnitude.max(axis=1)
    nonfinite = maxbits >= 0x7F800000
    _, exps = np.frexp(np.where(nonfinite, 0, maxbits).astype(np.int32).view(np.float32))
    nonfinite |= exps >= EXP_OVERFLOW
    exps = np.where((maxbits == 0) | nonfinite, EXP_MIN, np.maximum(exps, EXP_MIN))
    return exps.astype(np.int8), nonfinite


def _factors(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split 2**shift into one or two float32 factors of shape (m, 1), each within float32's normal range."""
    if shift.size == 0 or (shift.max() <= 126 and shift.min() >= -126):
        return np.ldexp(np.float32(1), shift).astype(np.float32)[:, None], None
    half = shift // 2
    return (
        np.ldexp(np.float32(1), half).astype(np.float32)[:, None],
        np.ldexp(np.float32(1), shift - half).astype(np.float32)[:, None],
    )


def quantize_reference(
    blocks: np.ndarray,
    shared_exps: np.ndarray,
    num_workers: int,
    out: np.ndarray | None = None,
    *,
    own: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """numpy reference of :func:`quantize`."""
    blocks = _as_blocks(blocks)
    shared = np.asarray(shared_exps)
    if shared.shape != (blocks.shape[0],):
        raise QuantizationError(f"{shared.shape} exponents for {blocks.shape[0]} blocks")
    own_exps, nonfinite = own if own is not None else block_exponents_reference(blocks)
    f1, f2 = _factors(scale_shift(shared, num_workers))
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN lanes are zeroed just below
        tmp = np.multiply(blocks, f1, dtype=np.float32)
        if f2 is not None:
            np.multiply(tmp, f2, out=tmp)
        np.rint(tmp, out=tmp)
    bad = nonfinite | (own_exps > shared)
    if bad.any():
        tmp[bad] = 0
    if out is None:
        out = np.empty(blocks.shape, dtype=np.int32)
    np.copyto(out, tmp, casting="unsafe")
    return out


def dequantize_reference(
    sums: np.ndarray,
    shared_exps: np.ndarray,
    num_workers: int,
    nonfinite: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """numpy reference of :func:`dequantize`."""
    sums = np.asarray(sums)
    if sums.ndim != 2:
        raise QuantizationError(f"sums must be 2-D (blocks, lanes), got shape {sums.shape}")
    if out is None:
        out = np.empty(sums.shape, dtype=np.float32)
    np.copyto(out, sums, casting="unsafe")
    f1, f2 = _factors(-scale_shift(np.asarray(shared_exps), num_workers))
    with np.errstate(over="ignore"):  # a true sum beyond float32's range is inf, as float32 arithmetic gives
        np.multiply(out, f1, out=out)
        if f2 is not None:
            np.multiply(out, f2, out=out)
    if nonfinite is not None and np.any(nonfinite):
        out[np.asarray(nonfinite, dtype=bool)] = np.nan
    return out


# ---------------------------------------------------------------------------------------------------------------
# Quantizing in two steps: on the tensor's own device before the shared exponent is known, exactly after.
#
# A block's lanes depend on its shared exponent S, which only arrives with the RESULT of the slot's previous round.
# ``prescale`` does all the float arithmetic with the block's own exponent E <= S instead: t = x * 2**(30 - k - E)
# (exact, as above) kept as a fixed-point int32 with two bits below the integer part, p = sign(t) * (2 *
# floor(2|t|) + sticky), sticky = 1 when bits below 2**-1 were cut. ``requantize`` turns p into the lanes of S with
# integers only: shift right by d = S - E, rounding half to even, which needs just the bit below the rounding point
# (in p) and whether anything below it is non-zero (the remaining bits of p and its sticky bit). So
# ``requantize(prescale(x, E), E, S) == quantize(x, S)`` bit for bit. |t| < 2**(30 - k) makes |p| < 2**(32 - k):
# an int32 for k >= 1, i.e. for two workers or more (one worker needs no exponent agreement).


def prescale_reference(
    blocks: np.ndarray, own_exps: np.ndarray, nonfinite: np.ndarray, num_workers: int
) -> np.ndarray:
    """float32 blocks (m, L) -> int32 pre-lanes at their own exponents (non-finite blocks all zero)."""
    blocks = _as_blocks(blocks)
    check_prescalable(num_workers)
    f1, f2 = _factors(scale_shift(np.asarray(own_exps), num_workers))
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite blocks are zeroed just below
        t = np.multiply(blocks, f1, dtype=np.float32)
        if f2 is not None:
            np.multiply(t, f2, out=t)
        doubled = np.abs(t) * np.float32(2)
        whole = np.floor(doubled)
        pre = whole.astype(np.int64) * 2 + (doubled != whole)
    pre = np.where(t < 0, -pre, pre)
    pre[np.asarray(nonfinite, dtype=bool)] = 0
    return pre.astype(np.int32)


def requantize_reference(
    pre: np.ndarray, own_exps: np.ndarray, shared_exps: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """int32 pre-lanes (m, L) at their own exponents -> the int32 lanes of the shared exponents (integers only).

    Blocks whose own exponent exceeds the shared one become zeros, as :func:`quantize` makes them.
    """
    pre = np.asarray(pre)
    own = np.asarray(own_exps, dtype=np.int64)
    shared = np.asarray(shared_exps, dtype=np.int64)
    if pre.ndim != 2 or own.shape != (pre.shape[0],) or shared.shape != (pre.shape[0],):
        raise QuantizationError(
            f"pre-lanes {pre.shape} need one own and one shared exponent per row, got {own.shape} and {shared.shape}"
        )
    d = np.clip(shared - own, 0, 31)[:, None]
    magnitude = np.abs(pre.astype(np.int64))
    whole, sticky = magnitude >> 1, magnitude & 1
    kept = whole >> (d + 1)
    rest = whole & ((np.int64(1) << (d + 1)) - 1)
    half = np.int64(1) << d
    up = (rest > half) | ((rest == half) & ((sticky | (kept & 1)) == 1))
    lanes = np.where(pre < 0, -(kept + up), kept + up)
    lanes[own > shared] = 0
    if out is None:
        out = np.empty(pre.shape, np.int32)
    np.copyto(out, lanes, casting="unsafe")
    return out


def requantize(
    pre: np.ndarray, own_exps: np.ndarray, shared_exps: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`requantize_reference` in one compiled pass; ``out`` may be packet lanes (either byte order, any row
    stride), as :func:`quantize`'s."""
    if out is None:
        out = np.empty(np.shape(pre), np.int32)
    try:
        _native.requantize(pre, own_exps, shared_exps, out)
    except _native.Unsupported:
        return requantize_reference(pre, own_exps, shared_exps, out)
    return out


def check_prescalable(num_workers: int) -> None:
    """Raise unless pre-lanes of ``num_workers`` fit int32 (two workers or more)."""
    if headroom_bits(num_workers) < 1:
        raise QuantizationError(
            f"pre-lanes need k >= 1 bit of headroom, i.e. two workers or more (got {num_workers}): quantize directly"
        )

# ---------------------------------------------------------------------------------------------------------------
# The float path as callers use it: one compiled pass over memory per call.


def block_exponents(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block exponent (int8) and non-finite flag (bool) of float32 blocks shaped (m, L)."""
    m = len(blocks) if isinstance(blocks, np.ndarray) and blocks.ndim == 2 else 0
    exps, nonfinite = np.empty(m, np.int8), np.empty(m, bool)
    try:
        _native.block_exponents(blocks, exps, nonfinite)
    except _native.Unsupported:
        return block_exponents_reference(blocks)
    return exps, nonfinite


def quantize(
    blocks: np.ndarray,
    shared_exps: np.ndarray,
    num_workers: int,
    out: np.ndarray | None = None,
    *,
    own: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Quantize float32 blocks (m, L) with the shared per-block exponents into int32 lanes (m, L).

    ``own`` is this worker's ``block_exponents(blocks)`` if the caller already has it. Blocks that are non-finite,
    or whose own exponent exceeds the shared one (the shared exponent does not cover them: a caller error), become
    zeros instead of lanes that could make the switch's sum wrap; the caller sends the non-finite flag for them.
    ``out`` may hold its lanes in either byte order and its rows at any stride: ``out=lane_view(frames, ...)``
    writes the wire's big-endian lanes straight into packet buffers.
    """
    base = scale_base(num_workers)
    own_exps, nonfinite = own if own is not None else block_exponents(blocks)
    if out is None:
        out = np.empty(np.shape(blocks), np.int32)
    try:
        _native.quantize(blocks, shared_exps, base, own_exps, nonfinite, out)
    except _native.Unsupported:
        return quantize_reference(blocks, shared_exps, num_workers, out, own=(own_exps, nonfinite))
    return out


def dequantize(
    sums: np.ndarray,
    shared_exps: np.ndarray,
    num_workers: int,
    nonfinite: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Turn summed int32 lanes (m, L) back into float32; blocks flagged non-finite become NaN.

    ``sums`` may hold its lanes in either byte order and its rows at any stride (``lane_view`` of received
    packets).
    """
    base = scale_base(num_workers)
    if out is None:
        out = np.empty(np.shape(sums), np.float32)
    try:
        _native.dequantize(sums, shared_exps, base, nonfinite, out)
    except _native.Unsupported:
        return dequantize_reference(sums, shared_exps, num_workers, nonfinite, out)
    return out


def lane_view(buf: Any, count: int, lanes: int, *, offset: int, stride: int) -> np.ndarray:
    """The payloads of ``count`` packets in ``buf`` as a (count, lanes) big-endian int32 array, without a copy.

    Payload i starts at byte ``offset + i * stride`` of ``buf`` (a bytearray, memoryview or uint8 array holding a
    burst of frames back to back). :func:`quantize` writes into it, :func:`dequantize` reads from it, in one pass.
    """
    return np.ndarray(
        (count, lanes), dtype=LANE_DTYPE, buffer=buf, offset=offset, strides=(stride, LANE_DTYPE.itemsize)
    )


# ---------------------------------------------------------------------------------------------------------------
# Checks and helpers.


def error_bound(exact_sum: np.ndarray, shared_exps: np.ndarray, num_workers: int) -> np.ndarray:
    """The documented bound on |dequantized - exact_sum| per lane, for blocks shaped (m, L)."""
    k = headroom_bits(num_workers)
    step = np.ldexp(1.0, np.asarray(shared_exps, dtype=np.int64) + k - 31)[:, None]
    return num_workers * step * (1 + 2.0**-24) + 2.0**-24 * np.abs(exact_sum)


def check_int32_exact(x: np.ndarray, num_workers: int) -> None:
    """Raise unless an n-way sum of int32 values like ``x`` on every worker cannot wrap.

    Each worker can only see its own values, so the rule is local: |x| <= (2**31 - 1) // n.
    """
    if x.size == 0 or headroom_bits(num_workers) == 0:
        return
    limit = _INT32_MAX // num_workers
    hi, lo = int(x.max()), int(x.min())
    if hi > limit or lo < -limit:
        worst = hi if hi > -lo else lo
        raise QuantizationError(
            f"int32 all-reduce over {num_workers} workers could wrap: value {worst} exceeds "
            f"+/-{limit} (= (2**31 - 1) // {num_workers}); use a float tensor or smaller values"
        )


def _as_blocks(blocks: np.ndarray) -> np.ndarray:
    if not isinstance(blocks, np.ndarray) or blocks.dtype != np.float32 or blocks.ndim != 2:
        raise QuantizationError(
            f"expected a float32 array shaped (blocks, lanes), got {getattr(blocks, 'dtype', type(blocks))} "
            f"{getattr(blocks, 'shape', '')}"
        )
    return blocks


# ---------------------------------------------------------------------------------------------------------------
# torch: the same arithmetic on CPU tensors, for callers that want to stay in torch (bit-identical to numpy).


def _torch_factors(shift: np.ndarray) -> tuple[Any, Any]:
    """2**shift as two float32 tensor factors (m, 1); always split, which gives the same products as one factor."""
    import torch

    half = shift // 2
    one = np.float32(1)
    return (
        torch.from_numpy(np.ldexp(one, half).astype(np.float32)[:, None]),
        torch.from_numpy(np.ldexp(one, shift - half).astype(np.float32)[:, None]),
    )


def torch_quantize(blocks: Any, shared_exps: Any, num_workers: int) -> Any:
    """torch twin of :func:`quantize` (float32 CPU tensor (m, L) -> int32 tensor)."""
    import torch

    f1, f2 = _torch_factors(scale_shift(np.asarray(shared_exps), num_workers))
    tmp = torch.round(blocks * f1 * f2)
    bound = float(1 << (_MAG_BITS - headroom_bits(num_workers)))
    bad = ~(tmp.abs().amax(dim=1) <= bound) if tmp.shape[1] else torch.zeros(len(tmp), dtype=torch.bool)
    tmp[bad] = 0
    return tmp.to(torch.int32)


def torch_dequantize(sums: Any, shared_exps: Any, num_workers: int, nonfinite: Any = None) -> Any:
    """torch twin of :func:`dequantize`."""
    import torch

    f1, f2 = _torch_factors(-scale_shift(np.asarray(shared_exps), num_workers))
    out = sums.to(torch.float32) * f1 * f2
    if nonfinite is not None:
        out[torch.as_tensor(np.asarray(nonfinite, dtype=bool))] = float("nan")
    return out
