"""Blocks that exercise every branch of the quantizer, and the bit-exact comparison of the torch twin with the numpy
reference; for any device (test_torch_quantize.py runs them on CPU and CUDA tensors)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from netagg.host_agent import quantize as q
from netagg.host_agent import staging
from netagg.host_agent import torch_quantize as tq


def float_cases(seed: int = 0) -> Iterator[tuple[str, np.ndarray, int, np.ndarray]]:
    """(name, float32 blocks (m, L), workers, shared exponents): normal, tiny, denormal, huge, inf/NaN, zero rows."""
    rng = np.random.default_rng(seed)
    for lanes in (1, 32, 256):
        for workers in (1, 2, 3, 4, 32):
            m = 24
            scales = 2.0 ** rng.integers(-140, 128, size=(m, 1))
            with np.errstate(over="ignore"):  # beyond float32's range is inf: a non-finite block, as wanted
                blocks = (rng.standard_normal((m, lanes)) * scales).astype(np.float32)
            blocks[0] = 0.0
            blocks[1] = -0.0
            blocks[2, 0] = np.inf
            blocks[3, -1] = np.nan
            blocks[4] = np.float32(1e-45)  # the smallest denormal
            blocks[5] = np.float32(3.0e38)  # >= 2**127: non-finite by the quantizer's rule
            blocks[6] = np.float32(2.0**126) * (rng.standard_normal(lanes) > 0)
            blocks[7] = 0.5  # exactly a power of two: e = 0, ties in rounding below
            own, _ = q.block_exponents_reference(blocks)
            # The shared exponent is the maximum over workers: >= own, except where another worker lied (zeroed).
            shared = np.maximum(own.astype(np.int16), rng.integers(-128, 128, size=m)).clip(-128, 127)
            shared[8] = int(own[8]) - 1  # own exponent above the shared one: the row is zeroed
            yield f"L{lanes}-n{workers}", blocks, workers, shared.astype(np.int8)


def bits(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """The raw 32-bit patterns, so NaN compares equal to NaN and -0.0 differs from 0.0."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(a).view(np.uint32)


def assert_twin_matches_reference(device: str) -> int:
    """Every case, on ``device``: exponents, flags, lanes and dequantized sums bit-identical; returns the count."""
    checked = 0
    for name, blocks, workers, shared in float_cases():
        t = torch.from_numpy(blocks).to(device)
        ref_exps, ref_nonfinite = q.block_exponents_reference(blocks)
        exps, nonfinite = tq.block_exponents(t)
        assert exps.device.type == torch.device(device).type
        assert np.array_equal(exps.cpu().numpy(), ref_exps), name
        assert np.array_equal(nonfinite.cpu().numpy(), ref_nonfinite), name
        shared_t = torch.from_numpy(shared).to(device)
        lanes = tq.quantize(t, shared_t, workers)
        ref_lanes = q.quantize_reference(blocks, shared, workers)
        assert np.array_equal(lanes.cpu().numpy(), ref_lanes), name
        # A sum of n workers' lanes, as the switch returns it (each worker's lanes within +/-2**(30-k)).
        summed = ref_lanes.astype(np.int64) * workers
        summed = summed.clip(-(2**31), 2**31 - 1).astype(np.int32)
        out = tq.dequantize(torch.from_numpy(summed).to(device), shared_t, workers, nonfinite)
        ref_out = q.dequantize_reference(summed, shared, workers, ref_nonfinite)
        assert np.array_equal(bits(out), bits(ref_out)), name
        checked += 1
    return checked


def assert_int32_lanes_match(device: str) -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(-(2**31), 2**31, size=1000, dtype=np.int64).astype(np.int32)
    values[:4] = [-(2**31), 2**31 - 1, -1, 0]
    for lanes in (32, 256):
        ref = staging.split_int32(values, lanes)
        ours = tq.split_int32(torch.from_numpy(values).to(device), lanes)
        assert np.array_equal(ours.cpu().numpy(), ref)
        # Three workers' lane sums, joined back: int32 addition that wraps, as gloo's.
        summed = ref.astype(np.int64) * 3
        ref_join = staging.join_int32(summed.reshape(-1), values.size)
        ours_join = tq.join_int32(torch.from_numpy(summed.reshape(-1)).to(device), values.size)
        assert np.array_equal(ours_join.cpu().numpy(), ref_join)
        assert np.array_equal(ref_join, (values.astype(np.int64) * 3).astype(np.int32))


def assert_prescale_matches(device: str) -> int:
    """Pre-lanes made on ``device`` equal the numpy reference's, and requantizing them to the shared exponent gives
    exactly the lanes of quantizing with it (rows whose own exponent exceeds the shared one: zeros in both)."""
    checked = 0
    for name, blocks, workers, shared in float_cases(seed=1):
        if workers < 2:
            continue  # a one-worker job quantizes directly (pre-lanes need a bit of headroom)
        own, nonfinite = q.block_exponents_reference(blocks)
        t = torch.from_numpy(blocks).to(device)
        t_own, t_nonfinite = tq.block_exponents(t)
        pre = tq.prescale(t, t_own, t_nonfinite, workers)
        ref_pre = q.prescale_reference(blocks, own, nonfinite, workers)
        assert pre.dtype == torch.int32 and np.array_equal(pre.cpu().numpy(), ref_pre), name
        lanes = q.requantize_reference(ref_pre, own, shared)
        assert np.array_equal(lanes, q.quantize_reference(blocks, shared, workers, own=(own, nonfinite))), name
        checked += 1
    return checked
