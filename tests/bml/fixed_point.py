"""The expected result of a fixed-point float32 sum, computed with the quantizer's numpy reference."""

from __future__ import annotations

import numpy as np

from netagg.host_agent import quantize as q

#: Elements per block: the default of ``BmlPeers.allreduce_float`` and of the torch backend.
LANES = 256


def fixed_point_reference(
    per_rank: list[np.ndarray], lanes: int = LANES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed-point sum of every rank's values (each rank's block exponents, the largest shared), the float64
    sum, and the quantizer's error bound for it; ``lanes`` elements per block."""
    n, count = len(per_rank), per_rank[0].size
    blocks = np.zeros((n, -(-count // lanes) * lanes), np.float32)
    for rank, x in enumerate(per_rank):
        blocks[rank, :count] = x
    blocks = blocks.reshape(n, -1, lanes)
    own = [q.block_exponents_reference(b) for b in blocks]
    shared = np.max([exps.astype(np.int16) for exps, _ in own], axis=0).astype(np.int8)
    nonfinite = np.any([flags for _, flags in own], axis=0)
    total = sum(q.quantize_reference(b, shared, n).astype(np.int64) for b in blocks)
    assert np.abs(total).max() <= 2**30  # the headroom: the int32 sum cannot wrap
    fixed = q.dequantize_reference(total.astype(np.int32), shared, n, nonfinite)
    exact = blocks.astype(np.float64).sum(axis=0)
    bound = q.error_bound(exact, shared, n)
    return fixed.reshape(-1)[:count], exact.reshape(-1)[:count], bound.reshape(-1)[:count]
