"""Quantize + dequantize speed as a ratio to a numpy copy of the same tensor, measured side by side (goal: >= 0.5).

A round trip is what one all-reduce costs a worker on its float path: block exponents, quantize with the shared
exponents, dequantize the sums. It is timed for the compiled kernels and for the numpy reference, on the whole
tensor in one call and in 1 MiB pieces (a streaming agent's working set), and for the kernels also with the
lanes in packet buffers (big-endian, a header between blocks: the wire's layout). ``requantize alone`` is the
agent's part of quantizing a tensor that lives on a GPU (pre-lanes made there, docs/quantization.md). Next to
the numpy copy stands a bare C memcpy of the same bytes: what this machine's C library makes of one read and one
write of the tensor.
(Kernels whose output is 4 MiB or more stream their stores; a memcpy below glibc's non-temporal threshold does
not, so a single kernel can beat it.)

Every case runs once per round, rounds interleaved, so all cases see the same load. A case's ratio is given as
its best time against the copy's best time, and per round (against that round's copy) as median and range.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import numpy as np

from bench.common import per_call, report
from netagg.host_agent import _native
from netagg.host_agent import quantize as q
from netagg.wire import AGG_OFFSET, HEADER_BYTES

#: Bytes in front of each block's lanes in a packet buffer: Ethernet, IPv4, UDP and the aggregation header.
FRAME_HEADER_BYTES = AGG_OFFSET + HEADER_BYTES


def _rounds(cases: dict[str, Callable[[], object]], repeat: int, min_time: float) -> dict[str, list[float]]:
    """Seconds per call of every case in each of ``repeat`` interleaved rounds."""
    for fn in cases.values():
        fn()  # warm caches, page in the buffers
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            times[name].append(per_call(fn, min_time))
    return times


def run(
    megabytes: float = 16.0, lanes: int = 256, workers: int = 8, repeat: int = 7, min_time: float = 0.1
) -> dict[str, float]:
    """Measure; returns every case's median per-round ratio to the numpy copy (and the load average)."""
    count = int(megabytes * 2**20) // 4 // lanes * lanes
    rng = np.random.default_rng(0)
    src = rng.standard_normal(count).astype(np.float32).reshape(-1, lanes)
    m = len(src)
    dst = np.empty_like(src)
    lanes_buf = np.empty(src.shape, np.int32)
    # Pieces reuse one piece-sized lane buffer, as a streaming agent reuses its packet buffers.
    piece = min(m, max(1, 2**20 // (4 * lanes)))  # rows in 1 MiB of float32
    piece_buf = np.empty((piece, lanes), np.int32)
    stride = FRAME_HEADER_BYTES + 4 * lanes
    wire = q.lane_view(bytearray(piece * stride), piece, lanes, offset=FRAME_HEADER_BYTES, stride=stride)

    def copy() -> None:
        np.copyto(dst, src)

    def memcpy() -> None:
        _native.copy(dst, src)

    def roundtrip(exponents: Callable, quant: Callable, dequant: Callable, lanes_out: np.ndarray) -> None:
        rows = len(lanes_out)
        for i in range(0, m, rows):
            s, d = src[i : i + rows], dst[i : i + rows]
            lb = lanes_out[: len(s)]
            exps, nonfinite = exponents(s)
            quant(s, exps, workers, out=lb, own=(exps, nonfinite))
            dequant(lb, exps, workers, nonfinite, out=d)

    kernels = (q.block_exponents, q.quantize, q.dequantize)
    reference = (q.block_exponents_reference, q.quantize_reference, q.dequantize_reference)
    exps, nonfinite = q.block_exponents(src)
    # Pre-lanes (made on a GPU for tensors there) requantized to shared exponents 0-2 above the blocks' own.
    pre = q.prescale_reference(src, exps, nonfinite, workers)
    shared = (exps.astype(np.int16) + np.arange(m) % 3).clip(-128, 127).astype(np.int8)
    cases: dict[str, Callable[[], object]] = {
        "numpy copy": copy,
        "C memcpy": memcpy,
        "kernels, one call": lambda: roundtrip(*kernels, lanes_buf),
        "kernels, 1 MiB pieces": lambda: roundtrip(*kernels, piece_buf),
        "kernels, 1 MiB pieces, packets": lambda: roundtrip(*kernels, wire),
        "  exponents alone, one call": lambda: q.block_exponents(src),
        "  quantize alone, one call": lambda: q.quantize(src, exps, workers, out=lanes_buf, own=(exps, nonfinite)),
        "  dequantize alone, one call": lambda: q.dequantize(lanes_buf, exps, workers, nonfinite, out=dst),
        "  requantize alone, one call": lambda: q.requantize(pre, exps, shared, out=lanes_buf),
        "numpy reference, one call": lambda: roundtrip(*reference, lanes_buf),
        "numpy reference, 1 MiB pieces": lambda: roundtrip(*reference, piece_buf),
    }
    load_before = os.getloadavg()[0]
    times = _rounds(cases, repeat, min_time)
    load_after = os.getloadavg()[0]

    copies = times["numpy copy"]
    nbytes = src.nbytes
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {"load_before": load_before, "load_after": load_after}
    for name, ts in times.items():
        if name == "numpy copy":
            rows.append((name, f"{nbytes / min(ts) / 1e9:6.2f} GB/s"))
            continue
        ratios = [c / t for c, t in zip(copies, ts)]
        figures[name.strip()] = med = statistics.median(ratios)
        rows.append(
            (
                name,
                f"{nbytes / min(ts) / 1e9:6.2f} GB/s  ratio {min(copies) / min(ts):.3f} best/best, "
                f"per round median {med:.3f} range {min(ratios):.3f}-{max(ratios):.3f}",
            )
        )
    rows += [
        ("goal", "kernels' round trip >= 0.5x the numpy copy"),
        ("kernels", f"{_native.active_kernels()} (available: {', '.join(_native.available_kernels())})"),
        ("load average", f"{load_before:.2f} at start, {load_after:.2f} at end"),
    ]
    report(
        f"quantize+dequantize vs numpy copy ({nbytes / 2**20:.0f} MiB float32, {lanes} lanes/block, n={workers}, "
        f"{repeat} rounds; GB/s of tensor, best round)",
        rows,
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=16.0)
    parser.add_argument("--lanes", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per case and round")
    parser.add_argument("--kernels", choices=_native.available_kernels(), help="kernel set (default: the best)")
    args = parser.parse_args(argv)
    if args.kernels:
        _native.select_kernels(args.kernels)
    run(args.megabytes, args.lanes, args.workers, args.repeat, args.min_time)


if __name__ == "__main__":
    main()
