"""Run every benchmark: `python -m bench` (or one: `python -m bench.quantize --help`)."""

from __future__ import annotations

import importlib
import sys

#: Benchmark modules, each with a main(argv) that prints its figures as ratios measured in the same run.
BENCHMARKS = ["quantize", "softswitch", "agent"]


def main() -> None:
    wanted = sys.argv[1:] or BENCHMARKS
    for name in wanted:
        if name not in BENCHMARKS:
            sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        importlib.import_module(f"bench.{name}").main([])


if __name__ == "__main__":
    main()
