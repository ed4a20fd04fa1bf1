"""``python -m examples.mininet``: the emulated network demo (run as root from the repository root)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from netagg.constants import LANE_COUNTS

_MININET_MISSING = (
    "Mininet's Python package is not importable from this interpreter ({python}). Install the Debian package "
    "(`make install` does: apt-get install mininet) and make its package visible to the virtualenv, e.g. "
    "ln -s /usr/lib/python3/dist-packages/mininet \"$(python -c 'import sysconfig; "
    'print(sysconfig.get_paths()["purelib"])\')/mininet"'
)


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not positive")
        return value

    parse.__name__ = kind.__name__
    return parse


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"loss {text} must be in [0, 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.mininet",
        description="netagg in an emulated network: N Mininet hosts on one aggregating switch (BMv2 when "
        "simple_switch_grpc is on PATH, else the softswitch) all-reduce seeded data through it, each result "
        "is checked against a locally computed reference, and a summary is printed. Needs root.",
    )
    parser.add_argument("--hosts", type=_positive(int), default=4, metavar="N", help="hosts (default 4)")
    parser.add_argument(
        "--size",
        type=_positive(int),
        default=1 << 20,
        metavar="BYTES",
        help="bytes each host all-reduces (default 1048576)",
    )
    parser.add_argument(
        "--loss",
        type=_probability,
        default=0.0,
        metavar="P",
        help="the switch's simulated loss on every port, in and out (default 0)",
    )
    parser.add_argument(
        "--bw",
        type=_positive(float),
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
        type=_positive(int),
        default=None,
        metavar="W",
        help="slots in flight per host (default: the agent's)",
    )
    parser.add_argument(
        "--iterations",
        type=_positive(int),
        default=3,
        metavar="K",
        help="timed all-reduces per host after the checked one (default 3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the loss (default 0)")
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
        "--epochs", type=_positive(int), default=2, metavar="E", help="epochs of --train (default 2)"
    )
    parser.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="TOML topology instead of --hosts (format in docs/demo.md)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
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
    args = build_parser().parse_args(argv)
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
