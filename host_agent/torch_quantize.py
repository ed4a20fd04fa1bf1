"""The quantizer's float and int32 paths in torch, on whatever device a tensor lives (CPU, CUDA, ...).

The twin of :mod:`netagg.host_agent.quantize`'s numpy reference (``block_exponents_reference``,
``quantize_reference``, ``dequantize_reference``) and of the int32 lane split of :mod:`netagg.host_agent.staging`,
computing the same bits with torch ops only: integer views of the float bits, integer maxima, ``frexp``, products
with exact powers of two (built from their exponent bits, never from ``pow``), round-half-to-even and casts. No
step depends on the device's float rounding mode beyond IEEE round-to-nearest-even, so a CUDA tensor gives the
numpy reference's bits (tests/torch_backend/test_torch_quantize.py checks it on CPU tensors, tests/gpu/ on CUDA).

Shapes and conventions are the reference's: float32 blocks ``(m, L)``, int8 exponents ``(m,)``, bool non-finite
flags ``(m,)``, int32 lanes ``(m, L)``.
"""

from __future__ import annotations

import torch

from netagg.host_agent.quantize import _MAG_BITS, EXP_OVERFLOW, QuantizationError, check_prescalable, headroom_bits
from netagg.wire import EXP_MIN

_SIGN_OFF = 0x7FFFFFFF
_INF_BITS = 0x7F800000


def block_exponents(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block: the exponent e with max|x| < 2**e (int8, EXP_MIN for all-zero blocks) and the non-finite flag."""
    _check_blocks(blocks)
    m = blocks.shape[0]
    if blocks.shape[1] == 0:
        return (torch.full((m,), EXP_MIN, dtype=torch.int8, device=blocks.device),
                torch.zeros(m, dtype=torch.bool, device=blocks.device))  # fmt: skip
    maxbits = torch.bitwise_and(blocks.contiguous().view(torch.int32), _SIGN_OFF).amax(dim=1)
    nonfinite = maxbits >= _INF_BITS
    _, exps = torch.frexp(torch.where(nonfinite, torch.zeros_like(maxbits), maxbits).view(torch.float32))
    nonfinite |= exps >= EXP_OVERFLOW
    exps = torch.where((maxbits == 0) | nonfinite, torch.full_like(exps, EXP_MIN), exps.clamp(min=EXP_MIN))
    return exps.to(torch.int8), nonfinite


def scale_shift(shared_exps: torch.Tensor, num_workers: int) -> torch.Tensor:
    """Per-block binary scale s = 30 - k - E (int32)."""
    return _MAG_BITS - headroom_bits(num_workers) - shared_exps.to(torch.int32)


def quantize(
    blocks: torch.Tensor,
    shared_exps: torch.Tensor,
    num_workers: int,
    own: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """float32 blocks -> int32 lanes scaled by 2**(30 - k - E); non-finite blocks, and blocks whose own exponent
    exceeds the shared one, are all zero."""
    _check_blocks(blocks)
    if tuple(shared_exps.shape) != (blocks.shape[0],):
        raise QuantizationError(f"{tuple(shared_exps.shape)} exponents for {blocks.shape[0]} blocks")
    own_exps, nonfinite = own if own is not None else block_exponents(blocks)
    f1, f2 = _factors(scale_shift(shared_exps.to(blocks.device), num_workers))
    tmp = blocks * f1
    if f2 is not None:
        tmp = tmp * f2
    tmp = torch.round(tmp)  # half to even, as numpy's rint
    bad = nonfinite | (own_exps.to(torch.int32) > shared_exps.to(blocks.device, torch.int32))
    tmp = torch.where(bad[:, None], torch.zeros_like(tmp), tmp)
    return tmp.to(torch.int32)


def prescale(
    blocks: torch.Tensor, own_exps: torch.Tensor, nonfinite: torch.Tensor, num_workers: int
) -> torch.Tensor:
    """float32 blocks -> int32 pre-lanes at the blocks' own exponents (``quantize.prescale_reference``): all the
    float arithmetic of quantizing, done before the shared exponents are known; the agent finishes each block with
    integer shifts (``requantize``) once its shared exponent arrives. Non-finite blocks are all zero."""
    _check_blocks(blocks)
    check_prescalable(num_workers)
    f1, f2 = _factors(scale_shift(own_exps.to(blocks.device), num_workers))
    t = blocks * f1
    if f2 is not None:
        t = t * f2
    doubled = t.abs() * 2
    whole = torch.floor(doubled)
    pre = whole.to(torch.int32) * 2 + (doubled != whole).to(torch.int32)
    pre = torch.where(t < 0, -pre, pre)
    return torch.where(nonfinite.to(blocks.device)[:, None], torch.zeros_like(pre), pre)


def dequantize(
    sums: torch.Tensor,
    shared_exps: torch.Tensor,
    num_workers: int,
    nonfinite: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed int32 lanes -> float32 values (NaN for blocks a worker flagged non-finite)."""
    if sums.ndim != 2:
        raise QuantizationError(f"sums must be 2-D (blocks, lanes), got shape {tuple(sums.shape)}")
    out = sums.to(torch.float32)
    f1, f2 = _factors(-scale_shift(shared_exps.to(sums.device), num_workers))
    out = out * f1
    if f2 is not None:
        out = out * f2
    if nonfinite is not None:
        out = torch.where(nonfinite.to(sums.device)[:, None], torch.full_like(out, float("nan")), out)
    return out


def split_int32(values: torch.Tensor, lanes: int) -> torch.Tensor:
    """int32 values -> (m, lanes) int32 blocks of (low 16 bits unsigned, high 16 bits signed) lane pairs."""
    flat = values.reshape(-1).to(torch.int32)
    pairs = torch.stack((torch.bitwise_and(flat, 0xFFFF), torch.bitwise_right_shift(flat, 16)), dim=1).reshape(-1)
    m = -(-pairs.numel() // lanes)
    out = torch.zeros(m * lanes, dtype=torch.int32, device=values.device)
    out[: pairs.numel()] = pairs
    return out.reshape(m, lanes)


def join_int32(lanes: torch.Tensor, count: int) -> torch.Tensor:
    """Summed lane pairs (flat) -> the int32 sums, wrapped as int32 addition wraps."""
    low = lanes[0 : 2 * count : 2].to(torch.int64)
    high = lanes[1 : 2 * count : 2].to(torch.int64)
    wide = high * 65536 + low
    # The low 32 bits as a signed int32 (a plain int64 -> int32 cast is not defined to wrap on every device).
    wide = torch.bitwise_and(wide, 0xFFFFFFFF)
    return torch.where(wide >= 2**31, wide - 2**32, wide).to(torch.int32)


def _pow2(shift: torch.Tensor) -> torch.Tensor:
    """2**shift as float32 for shift in [-126, 127], from the exponent bits: exact on every device."""
    return torch.bitwise_left_shift(shift.to(torch.int32) + 127, 23).view(torch.float32)


def _factors(shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """2**shift as one float32 factor (m, 1), or two when a shift leaves the normal range (as the reference)."""
    shift = shift.to(torch.int32)
    if shift.numel() == 0 or (int(shift.max()) <= 126 and int(shift.min()) >= -126):
        return _pow2(shift)[:, None], None
    half = torch.div(shift, 2, rounding_mode="floor")
    return _pow2(half)[:, None], _pow2(shift - half)[:, None]


def _check_blocks(blocks: torch.Tensor) -> None:
    if not isinstance(blocks, torch.Tensor) or blocks.dtype != torch.float32 or blocks.ndim != 2:
        raise QuantizationError(
            f"expected a float32 tensor shaped (blocks, lanes), got {getattr(blocks, 'dtype', type(blocks))} "
            f"{tuple(getattr(blocks, 'shape', ()))}"
        )
