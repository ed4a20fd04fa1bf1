"""Bucketed, normalized, unbiased stochastic quantizers with bit-packed codes.

A vector is cut into buckets of ``bucket_size`` coordinates. Each bucket is sent as one float32 norm and one
``bits``-wide code per coordinate: a sign bit and the index of a *magnitude level*. The levels are
``0 = l_0 < l_1 < ... < l_s = 1`` with ``s + 1 = 2**(bits - 1)`` (4 levels at 3 bits). A coordinate's normalized
magnitude ``r = |v_i| / norm`` lies in some interval ``[l_j, l_j+1]`` and is rounded up to ``l_j+1`` with probability
``(r - l_j) / (l_j+1 - l_j)``, else down to ``l_j``: the code is unbiased, ``E[Q(v)] = v``, and its variance is, in
closed form,

    E ||Q(v) - v||^2  =  sum_i  norm^2 * (l_j+1 - r_i) * (r_i - l_j)

Level convention: the zero level is always one of the ``2**(bits - 1)`` magnitude levels, and the sign takes the
remaining bit. A zero level lets a coordinate far below the first non-zero level round to exactly 0 most of the time
instead of being forced to +-l_1; it costs one code (+0 and -0 decode alike) and is what NUQSGD, QSGD and the
ALQ/AMQ paper use. The top level is pinned at 1, so nothing is clipped.

The schemes differ in their levels and norm:

* NUQSGD: exponential levels ``l_j = 2**(j - s)`` (0, 1/4, 1/2, 1 at 3 bits), L2 norm.
* QSGDinf: uniform levels ``j / s``, L-infinity norm (the largest magnitude of the bucket).
* TernGrad: levels {0, 1} (2 bits: ternary codes), L-infinity norm of the bucket clipped at 2.5 standard
  deviations; clipped coordinates are biased (as in the paper), the rest unbiased.
* ALQ and AMQ: levels fitted to the gradients' distribution (``netagg.host_agent.compression.adaptive``): ALQ any
  levels, AMQ ``l_j = p**(s - j)`` for one learned ``p``. Their norm is L-infinity by default: with the L2 norm of
  a large bucket nearly every ``r`` is far below 1, so the pinned top level is wasted and 3-bit codes keep only two
  useful levels; measured on the MLP gradients of examples/repro_alq.py at bucket size 16384, ALQ's normalized
  variance is 0.85 with L2 and 0.34 with L-infinity (QSGDinf: 0.77). ``norm=Norm.L2`` gives the L2 variant.

Non-finite input is not an error: a bucket holding inf or NaN is sent with a NaN norm and decodes as all-NaN, so an
overflow shows in the result as it would without compression (AMP's skip-step check sees it).

Payload layout (``compress``): the levels as float32 (``2**(bits - 1)`` of them; every worker may use its own), the
buckets' norms as float32, then the codes, ``bits`` bits each, most significant bit first, packed into bytes. Its
size depends only on the element count, so equal-sized all-gathers work.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

#: TernGrad clips each bucket at this many standard deviations before taking its largest magnitude.
TERNGRAD_CLIP_SIGMAS = 2.5

_FLOAT = np.dtype(np.float32)


class Norm(enum.Enum):
    L2 = "l2"
    LINF = "linf"


def uniform_levels(bits: int) -> np.ndarray:
    """QSGD's levels: 0, 1/s, ..., 1."""
    s = _level_count(bits) - 1
    return np.arange(s + 1, dtype=np.float64) / s


def exponential_levels(bits: int) -> np.ndarray:
    """NUQSGD's levels: 0, 2**(1-s), ..., 1/2, 1."""
    return power_levels(bits, 0.5)


def power_levels(bits: int, p: float) -> np.ndarray:
    """AMQ's levels: 0, p**(s-1), ..., p, 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"level ratio p={p} must lie in (0, 1)")
    s = _level_count(bits) - 1
    return np.concatenate([[0.0], p ** np.arange(s - 1, -1, -1, dtype=np.float64)])


def check_levels(levels: Any, bits: int) -> np.ndarray:
    """``levels`` checked (2**(bits-1) values rising strictly from 0 to 1) and rounded to float32, as they travel."""
    values = np.asarray(levels, dtype=np.float64).astype(np.float32).astype(np.float64)
    want = _level_count(bits)
    if values.shape != (want,):
        raise ValueError(f"{bits}-bit codes need {want} magnitude levels, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or values[0] != 0.0 or values[-1] != 1.0 or np.any(np.diff(values) <= 0):
        raise ValueError(f"levels must rise strictly from 0 to 1, got {values.tolist()}")
    return values


@dataclass(frozen=True)
class Codes:
    """One quantized vector: per-bucket norms and per-coordinate codes (sign bit above the level index)."""

    norms: np.ndarray  # float32 (buckets,)
    codes: np.ndarray  # uint8 (count,)
    levels: np.ndarray  # float64 (2**(bits-1),)


@dataclass(frozen=True)
class Context:
    """What ``decompress`` needs besides the payload: the original tensor's shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype


class StochasticQuantizer:
    """One quantization scheme at ``bits`` bits per coordinate over buckets of ``bucket_size``."""

    def __init__(
        self,
        name: str,
        bits: int,
        bucket_size: int,
        levels: Any,
        norm: Norm = Norm.L2,
        clip_sigmas: float | None = None,
    ) -> None:
        if not 2 <= bits <= 8:
            raise ValueError(f"bits={bits}: codes of 2 to 8 bits are supported")
        if bucket_size < 1:
            raise ValueError(f"bucket size {bucket_size} must be at least 1")
        if clip_sigmas is not None and not (np.isfinite(clip_sigmas) and clip_sigmas > 0):
            raise ValueError(f"clip at {clip_sigmas} standard deviations: must be a positive number")
        self.name = name
        self.bits = bits
        self.bucket_size = bucket_size
        self.norm = norm
        self.clip_sigmas = clip_sigmas
        self.levels = check_levels(levels, bits)

    def __repr__(self) -> str:
        return f"{self.name}(bits={self.bits}, bucket_size={self.bucket_size})"

    def with_levels(self, levels: Any) -> StochasticQuantizer:
        """The same scheme with other levels (ALQ and AMQ refit theirs during training)."""
        return StochasticQuantizer(self.name, self.bits, self.bucket_size, levels, self.norm, self.clip_sigmas)

    # --- the math ------------------------------------------------------------------------------------------

    def normalize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(buckets, bucket_size) float64 values, their norms, and the normalized magnitudes ``r`` in [0, 1].

        The last bucket is padded with zeros. A bucket with a non-finite value gets a NaN norm and r = 0.
        """
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        buckets = -(-flat.size // self.bucket_size)
        values = np.zeros(buckets * self.bucket_size)
        values[: flat.size] = flat
        values = values.reshape(buckets, self.bucket_size)
        finite = np.all(np.isfinite(values), axis=1)
        safe = np.where(finite[:, None], values, 0.0)
        if self.clip_sigmas is not None:
            bound = self.clip_sigmas * safe.std(axis=1, keepdims=True)
            safe = np.clip(safe, -bound, bound)
        if self.norm is Norm.L2:
            norms = np.sqrt(np.sum(safe * safe, axis=1))
        else:
            norms = np.max(np.abs(safe), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(norms[:, None] > 0, np.abs(safe) / norms[:, None], 0.0)
        np.minimum(r, 1.0, out=r)  # rounding of the norm can leave r a hair above 1
        norms = np.where(finite, norms, np.nan)
        return np.sign(safe), norms, r

    def _interval(self, r: np.ndarray) -> np.ndarray:
        """Index j of the level interval [l_j, l_j+1] holding each r."""
        top = self.levels.size - 2
        return np.clip(np.searchsorted(self.levels, r, side="right") - 1, 0, top)

    def quantize(self, x: np.ndarray, rng: np.random.Generator) -> Codes:
        """Stochastically round ``x`` to codes."""
        count = np.asarray(x).size
        sign, norms, r = self.normalize(x)
        j = self._interval(r)
        lo, hi = self.levels[j], self.levels[j + 1]
        up = rng.random(r.shape) < (r - lo) / (hi - lo)
        index = (j + up).reshape(-1)[:count].astype(np.uint8)
        negative = (sign < 0).reshape(-1)[:count].astype(np.uint8)
        codes = (negative << (self.bits - 1)) | index
        return Codes(norms.astype(np.float32), codes, self.levels)

    def dequantize(self, codes: Codes, count: int | None = None) -> np.ndarray:
        """The float32 values the codes stand for (``count`` of them; all by default)."""
        count = codes.codes.size if count is None else count
        index = codes.codes & ((1 << (self.bits - 1)) - 1)
        sign = 1.0 - 2.0 * (codes.codes >> (self.bits - 1)).astype(np.float64)
        norms = np.repeat(codes.norms.astype(np.float64), self.bucket_size)[: codes.codes.size]
        return (norms * sign * codes.levels[index]).astype(np.float32)[:count]

    def variance(self, x: np.ndarray) -> float:
        """E ||Q(x) - x||^2 in closed form: the rounding variance, plus the squared clipping bias of TernGrad."""
        sign, norms, r = self.normalize(x)
        j = self._interval(r)
        per = (self.levels[j + 1] - r) * (r - self.levels[j])
        total = float(np.sum(norms.astype(np.float64) ** 2 * per.sum(axis=1)))
        if self.clip_sigmas is not None:
            flat = np.asarray(x, dtype=np.float64).reshape(-1)
            clipped = (sign * r * norms[:, None]).reshape(-1)[: flat.size]
            total += float(np.nansum((clipped - flat) ** 2))
        return total

    def normalized_variance(self, x: np.ndarray) -> float:
        """E ||Q(x) - x||^2 / ||x||^2: the figure of merit of the ALQ paper."""
        total = float(np.sum(np.asarray(x, dtype=np.float64) ** 2))
        return self.variance(x) / total if total > 0 else 0.0

    # --- the wire ------------------------------------------------------------------------------------------

    def payload_bytes(self, count: int) -> int:
        """Bytes of ``compress``'s payload for ``count`` elements."""
        buckets = -(-count // self.bucket_size)
        return 4 * (self.levels.size + buckets) + -(-count * self.bits // 8)

    def compress(self, x: Any, rng: np.random.Generator) -> tuple[np.ndarray, Context]:
        """``x`` (numpy array or CPU tensor) -> (uint8 payload, context)."""
        values = _as_numpy(x)
        codes = self.quantize(values, rng)
        bits = np.unpackbits(codes.codes[:, None], axis=1)[:, 8 - self.bits :]
        payload = np.concatenate(
            [
                codes.levels.astype(_FLOAT).view(np.uint8),
                codes.norms.view(np.uint8),
                np.packbits(bits.reshape(-1)),
            ]
        )
        return payload, Context(tuple(values.shape), values.dtype)

    def decompress(self, payload: Any, ctx: Context) -> np.ndarray:
        """The values one ``compress`` payload stands for, shaped and typed as the original."""
        data = _as_numpy(payload)
        count = int(np.prod(ctx.shape, dtype=np.int64))
        if data.dtype != np.uint8 or data.shape != (self.payload_bytes(count),):
            raise ValueError(
                f"{self!r}: payload of {data.size} {data.dtype} values for {count} elements; expected "
                f"{self.payload_bytes(count)} bytes"
            )
        nlev = self.levels.size
        buckets = -(-count // self.bucket_size)
        levels = data[: 4 * nlev].view(_FLOAT).astype(np.float64)
        norms = data[4 * nlev : 4 * (nlev + buckets)].view(_FLOAT)
        bits = np.unpackbits(data[4 * (nlev + buckets) :])[: count * self.bits].reshape(count, self.bits)
        codes = (bits.astype(np.uint16) @ (1 << np.arange(self.bits - 1, -1, -1))).astype(np.uint8)
        return self.dequantize(Codes(norms, codes, levels)).reshape(ctx.shape).astype(ctx.dtype)


def nuqsgd(bits: int, bucket_size: int) -> StochasticQuantizer:
    return StochasticQuantizer("NUQSGD", bits, bucket_size, exponential_levels(bits))


def qsgdinf(bits: int, bucket_size: int) -> StochasticQuantizer:
    return StochasticQuantizer("QSGDinf", bits, bucket_size, uniform_levels(bits), Norm.LINF)


def terngrad(bucket_size: int) -> StochasticQuantizer:
    return StochasticQuantizer(
        "TRN", 2, bucket_size, uniform_levels(2), Norm.LINF, clip_sigmas=TERNGRAD_CLIP_SIGMAS
    )


def alq(bits: int, bucket_size: int, levels: Any = None, norm: Norm = Norm.LINF) -> StochasticQuantizer:
    """ALQ, starting from NUQSGD's levels until fitted."""
    start = exponential_levels(bits) if levels is None else levels
    return StochasticQuantizer("ALQ", bits, bucket_size, start, norm)


def amq(bits: int, bucket_size: int, p: float = 0.5, norm: Norm = Norm.LINF) -> StochasticQuantizer:
    return StochasticQuantizer("AMQ", bits, bucket_size, power_levels(bits, p), norm)


def _level_count(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: codes of 2 to 8 bits are supported")
    return 1 << (bits - 1)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    detach = getattr(x, "detach", None)
    if detach is not None:  # a torch tensor
        tensor = detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")
