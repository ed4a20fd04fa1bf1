"""The result every host must get, computed locally from the same seeded inputs the agents generate.

The switch sums int32 lanes exactly, so the all-reduce of float32 data is deterministic: every worker
quantizes each block with the shared exponent (the maximum over workers of the block's exponent), the switch
adds the lanes, and the sum is dequantized with the same exponent. Doing the same with
``netagg.host_agent.quantize`` on the inputs of all ranks gives the bit pattern each host's result must have.
"""

from __future__ import annotations

import hashlib

import numpy as np

from netagg.host_agent import quantize as q
from netagg.host_agent.cli import rank_data


def reference_result(
    seed: int, world_size: int, size_bytes: int, lanes: int, dtype: str = "float32"
) -> np.ndarray:
    """The all-reduce result of ``world_size`` ranks of ``netagg-agent --seed seed --size size_bytes``."""
    count = size_bytes // 4
    inputs = [rank_data(seed, rank, count, dtype, world_size) for rank in range(world_size)]
    if dtype == "int32":
        # Integer lanes travel as pairs of 16-bit halves and are put back together: the result is the wrapping
        # int32 sum (as gloo's).
        return np.sum(np.stack(inputs).astype(np.int64), axis=0).astype(np.int32)
    blocks_count = -(-count // lanes)
    blocks = np.zeros((world_size, blocks_count * lanes), np.float32)
    for rank, x in enumerate(inputs):
        blocks[rank, :count] = x
    blocks = blocks.reshape(world_size, blocks_count, lanes)
    own = [q.block_exponents(b) for b in blocks]
    shared = np.max(np.stack([exps.astype(np.int16) for exps, _ in own]), axis=0).astype(np.int8)
    nonfinite = np.any(np.stack([flags for _, flags in own]), axis=0)
    sums = np.zeros((blocks_count, lanes), np.int64)
    for b, own_rank in zip(blocks, own, strict=True):
        sums += q.quantize(b, shared, world_size, own=own_rank)
    result = q.dequantize(sums.astype(np.int32), shared, world_size, nonfinite)
    return result.reshape(-1)[:count]


def digest(values: np.ndarray) -> str:
    """SHA-256 of the array's bytes (native order), the form the check compares."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
