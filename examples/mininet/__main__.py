"""``python -m examples.mininet``: the emulated network demo (run as root from the repository root)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from netagg.constants import LANE_COUNTS, MAX_WORKERS, POOL_SLOTS
from netagg.host_agent.cli import (
    SEED_LIMIT,
    available_memory,
    binary_size,
    fraction,
    int_range,
    memory_needed,
    seconds,
    tensor_bytes,
)

_MININET_MISSING = (
    "Mininet's Python package is not importable from this interpreter ({python}). Install the Debian package "
    "(`make install` does: apt-get install mininet) and make its package visible to the virtualenv, e.g. "
    "ln -s /usr/lib/python3/dist-packages/mininet \"$(python -c 'import sysconfig; "
    'print(sysconfig.get_paths()["purelib"])\')/mininet"'
)


def _positive_finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:  # float() also takes "nan" and "inf"
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def memory_check(hosts: int, size: int) -> str | None:
    """Why ``hosts`` agents of ``size`` bytes each (with --check, as the demo runs them) cannot fit, or None."""
    needed, available = hosts * memory_needed(size, "float32", check=True), available_memory()
    if available is None or needed <= available:
        return None
    return (
        f"{size} bytes on each of {hosts} hosts needs at least {binary_size(needed)} of memory (every host's agent "
        f"runs on this machine); {binary_size(available)} is available"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.mininet",
        description="netagg in an emulated network: N Mininet hosts on one aggregating switch (BMv2 when "
        "simple_switch_grpc is on PATH, else the softswitch) all-reduce seeded data through it, each result "
        "is checked against a locally computed reference, and a summary is printed. Needs root.",
    )
    parser.add_argument(
        "--hosts", type=int_range(1, MAX_WORKERS), default=4, metavar="N", help=f"hosts, 1..{MAX_WORKERS} (default 4)"
    )
    parser.add_argument(
        "--size",
        type=tensor_bytes,
        default=1 << 20,
        metavar="BYTES",
        help="bytes each host all-reduces, a multiple of 4 (default 1048576)",
    )
    parser.add_argument(
        "--loss",
        type=fraction,
        default=0.0,
        metavar="P",
        help="the switch's simulated loss on every port, in and out (default 0)",
    )
    parser.add_argument(
        "--bw",
        type=_positive_finite,
        default=None,
        metavar="MBIT",
        help="shape every host link to this many Mbit/s in each direction (default: unshaped)",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        choices=LANE_COUNTS,
        default=LANE_COUNTS[-1],
        help=f"int32 lanes per packet (default {LANE_COUNTS[-1]})",
    )
    parser.add_argument(
        "--window",
        type=int_range(1, POOL_SLOTS),
        default=None,
        metavar="W",
        help=f"slots in flight per host, 1..{POOL_SLOTS} (default: 4 on BMv2, else the agent's)",
    )
    parser.add_argument(
        "--iterations",
        type=int_range(1),
        default=3,
        metavar="K",
        help="timed all-reduces per host after the first, untimed one; every result is checked (default 3)",
    )
    parser.add_argument(
        "--seed",
        type=int_range(0, SEED_LIMIT - 1),
        default=0,
        help=f"seed of the inputs and of the loss, 0..{SEED_LIMIT - 1} (default 0)",
    )
    parser.add_argument(
        "--target",
        choices=["auto", "bmv2", "softswitch"],
        default="auto",
        help="the switch (default auto: bmv2 if simple_switch_grpc is on PATH)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="run the torch DDP example (examples/train_ddp.py) on the hosts instead of the job",
    )
    parser.add_argument(
        "--epochs", type=int_range(1), default=2, metavar="E", help="epochs of --train (default 2)"
    )
    parser.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="TOML topology instead of --hosts (format in docs/demo.md)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=120.0,
        metavar="SECONDS",
        help="give up on the job (or the training) after this long (default 120)",
    )
    parser.add_argument(
        "--no-ping",
        dest="ping",
        action="store_false",
        help="skip the ping check between hosts before the job",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the log directory after a good run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.train:
        hosts = args.hosts
        if args.topology is not None:
            from .topology import TopologyError, load

            try:
                hosts = len(load(args.topology).hosts)
            except TopologyError as exc:
                parser.error(f"argument --topology: {exc}")
        problem = memory_check(hosts, args.size)
        if problem is not None:
            parser.error(f"argument --size: {problem}")
    try:
        import mininet.node  # noqa: F401
    except ImportError:
        print(_MININET_MISSING.format(python=sys.executable), file=sys.stderr)
        return 2
    from .demo import Demo, DemoError, DemoOptions
    from .processes import ProcessError
    from .topology import TopologyError

    options = DemoOptions(**vars(args))
    try:
        return Demo(options).run()
    except (DemoError, TopologyError, ProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
