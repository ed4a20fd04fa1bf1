"""Quantize + dequantize throughput as a ratio to a numpy copy of the same buffer (goal: >= 0.3)."""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import best_of, report
from netagg.host_agent import quantize as q


def run(megabytes: float = 16.0, lanes: int = 256, workers: int = 8) -> dict[str, float]:
    """Measure and return the figures (bytes per second and the ratio)."""
    count = int(megabytes * 2**20) // 4 // lanes * lanes
    rng = np.random.default_rng(0)
    src = rng.standard_normal(count).astype(np.float32).reshape(-1, lanes)
    dst = np.empty_like(src)
    lanes_buf = np.empty(src.shape, np.int32)

    def copy() -> None:
        np.copyto(dst, src)

    def roundtrip(rows: int) -> None:
        for i in range(0, len(src), rows):
            s, lb, d = src[i : i + rows], lanes_buf[i : i + rows], dst[i : i + rows]
            exps, nonfinite = q.block_exponents(s)
            q.quantize(s, exps, workers, out=lb, own=(exps, nonfinite))
            q.dequantize(lb, exps, workers, nonfinite, out=d)

    # Whole buffer in one call, and in 1 MiB pieces (what a streaming agent does: temporaries stay in cache).
    chunk_rows = max(1, 2**20 // (4 * lanes))
    t_copy = best_of(copy)
    t_whole = best_of(lambda: roundtrip(len(src)))
    t_chunked = best_of(lambda: roundtrip(chunk_rows))
    nbytes = src.nbytes
    figures = {
        "copy_GBps": nbytes / t_copy / 1e9,
        "whole_GBps": nbytes / t_whole / 1e9,
        "chunked_GBps": nbytes / t_chunked / 1e9,
        "ratio_whole": t_copy / t_whole,
        "ratio_chunked": t_copy / t_chunked,
    }
    report(
        f"quantize+dequantize vs numpy copy ({nbytes / 2**20:.0f} MiB float32, {lanes} lanes/block, n={workers})",
        [
            ("numpy copy", f"{figures['copy_GBps']:.2f} GB/s"),
            ("round trip, one call", f"{figures['whole_GBps']:.2f} GB/s  ratio {figures['ratio_whole']:.3f}"),
            ("round trip, 1 MiB pieces", f"{figures['chunked_GBps']:.2f} GB/s  ratio {figures['ratio_chunked']:.3f}"),
            ("goal", "ratio >= 0.3"),
        ],
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=16.0)
    parser.add_argument("--lanes", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    run(args.megabytes, args.lanes, args.workers)


if __name__ == "__main__":
    main()
