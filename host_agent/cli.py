"""``netagg-agent``: join a job and all-reduce seeded random data through the switch; prints goodput.

    netagg-agent --controller 127.0.0.1:9590 --job demo --world-size 2 --rank 0 --size 4194304

Every rank generates its data from (seed, rank), so each rank can also rebuild the others' inputs and check its
result against a float64 reference (``--check``).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from netagg.constants import MAX_WORKERS, POOL_SLOTS
from netagg.host_agent import quantize as q
from netagg.host_agent.client import DEFAULT_DEADLINE, DEFAULT_LANES, AllReduceClient
from netagg.host_agent.errors import AgentError

#: Seeds are 32-bit, as the software switch's drop-simulator seed (the Mininet demo passes one seed to both).
SEED_LIMIT = 1 << 32

# -- option values: each bad one is refused by argparse with one line naming the option ----------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in low..high (no upper limit when ``high`` is None)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in {low}..{high}")
        return value

    return parse


def tensor_bytes(text: str) -> int:
    """argparse type: a tensor size in bytes, at least one 4-byte element and a whole number of them."""
    value = _integer(text)
    if value < 4:
        raise argparse.ArgumentTypeError(f"{text} bytes: the size must be at least 4 (one float32/int32 element)")
    if value % 4:
        raise argparse.ArgumentTypeError(f"{text} bytes is not a multiple of 4 (whole float32/int32 elements)")
    return value


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (float() also takes "nan" and "inf")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


def fraction(text: str) -> float:
    """argparse type: a loss probability in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:  # False for NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1)")
    return value


def _ipv4_address(text: str) -> str:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address (e.g. 10.0.0.1)") from None
    if address.is_unspecified:
        raise argparse.ArgumentTypeError(
            f"{text} is a wildcard: give the local address the switch sends RESULTs to, not a wildcard"
        )
    return text


def _controller_address(text: str) -> str:
    from netagg.controller.api import parse_address

    try:
        _, port = parse_address(text.removeprefix("http://"))
    except ValueError:
        port = 0
    if port == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port in 1..65535")
    return text


def memory_needed(size: int, dtype: str, check: bool) -> int:
    """Bytes the agent needs at its peak for an all-reduce of ``size`` bytes, a little under what it takes.

    The input, this rank's staged lanes (an in-place float32 tensor is not copied: its blocks are quantized
    straight into packets and the sums land back in it), the result and numpy's temporaries. Peak RSS measured for
    64 MiB with one rank, interpreter included: 4.7 (float32), 11.7 (int32: two lanes per element, joined
    through int64) times the tensor; 14.7 and 12.7 with --check (the float64 reference sum and its error bound,
    the first result kept to compare the others with). The figures here are about 80% of those, so only a size
    that cannot fit is refused.
    """
    factor = {("int32", False): 9.0, ("int32", True): 10.0, ("float32", False): 3.5, ("float32", True): 11.5}
    return int(factor[dtype, check] * size)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), else physical memory; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def binary_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netagg-agent",
        description="Join a netagg job through the controller and all-reduce seeded random data; prints goodput "
        "(tensor bytes per second of all-reduce time). Run one per rank, all with the same --job, --world-size, "
        "--size, --dtype and --seed.",
    )
    parser.add_argument(
        "--controller",
        type=_controller_address,
        default="127.0.0.1:9590",
        metavar="HOST:PORT",
        help="the controller's job API (default 127.0.0.1:9590)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the job API's token file (default: $NETAGG_TOKEN, else $NETAGG_TOKEN_FILE, else "
        "~/.config/netagg/controller.token)",
    )
    parser.add_argument("--job", required=True, help="job name shared by all ranks")
    parser.add_argument(
        "--world-size", type=int_range(1, MAX_WORKERS), required=True, metavar="N",
        help=f"ranks in the job (1..{MAX_WORKERS})",
    )  # fmt: skip
    parser.add_argument(
        "--rank", type=int_range(0), required=True, metavar="R", help="this agent's rank (0..N-1)"
    )
    parser.add_argument(
        "--size", type=tensor_bytes, required=True, metavar="BYTES",
        help="tensor size in bytes (a multiple of 4; refused when this machine's free memory cannot hold it)",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=["float32", "int32"], default="float32")
    parser.add_argument(
        "--lanes",
        type=int,
        default=DEFAULT_LANES,
        choices=[32, 64, 128, 256],
        help=f"int32 lanes per packet (default {DEFAULT_LANES})",
    )
    parser.add_argument(
        "--window",
        type=int_range(1, POOL_SLOTS),
        default=None,
        metavar="W",
        help=f"slots in flight, 1..{POOL_SLOTS} (default: the client's default, at most the granted slots)",
    )
    parser.add_argument(
        "--loss",
        type=fraction,
        default=0.0,
        metavar="P",
        help="drop this fraction (in [0, 1)) of the agent's outgoing packets (seeded), to exercise recovery",
    )
    parser.add_argument(
        "--bind",
        type=_ipv4_address,
        default="127.0.0.1",
        metavar="ADDR",
        help="local IPv4 address for the agent's UDP socket (default 127.0.0.1)",
    )
    parser.add_argument(
        "--iterations", type=int_range(1), default=3, metavar="K", help="timed all-reduces (default 3)"
    )
    parser.add_argument(
        "--seed", type=int_range(0, SEED_LIMIT - 1), default=0, metavar="S",
        help=f"seed of every rank's input and of --loss (0..{SEED_LIMIT - 1}; default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--deadline",
        type=seconds,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help=f"fail an all-reduce that takes longer than this (default {DEFAULT_DEADLINE:g})",
    )
    parser.add_argument(
        "--join-timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for all ranks to join (default 60)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check every result: the first (untimed) one against the float64 sum of every rank's input, rebuilt "
        "from the seed (exact for int32, within the quantizer's error bound for float32), and each timed one "
        "against the first, bit for bit (the sum is deterministic). The comparisons run between the timed "
        "all-reduces, never inside them (one pass over the result each), and the reference after the last; a "
        "wrong result makes the agent exit 1 naming the iteration",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


def rank_data(seed: int, rank: int, count: int, dtype: str, world_size: int) -> np.ndarray:
    """The input of ``rank``: reproducible from (seed, rank) alone."""
    rng = np.random.default_rng([seed, rank])
    if dtype == "int32":
        limit = min(1 << 20, (2**31 - 1) // world_size)
        return rng.integers(-limit, limit + 1, size=count, dtype=np.int32)
    return rng.standard_normal(count, dtype=np.float32)


class ResultCheck:
    """--check: every result of the run, the first against a reference rebuilt from the seed, the rest against it.

    The switch's sum is deterministic (every rank quantizes each block with the shared exponent, the switch adds
    int32 lanes), so each timed result must equal the first bit for bit. ``compare`` costs one pass over the
    result and runs between timed all-reduces; ``finish`` rebuilds every rank's input, one rank at a time, after
    the last.
    """

    def __init__(self, args: argparse.Namespace, count: int, lanes: int) -> None:
        self._args = args
        self._count = count
        self._lanes = lanes
        self._first: np.ndarray | None = None
        self.results = 0
        self.error: str | None = None  # the first wrong result, described

    def compare(self, iteration: int, result: np.ndarray) -> None:
        """Record iteration 0's result; compare a later one with it."""
        self.results += 1
        if self._first is None:
            self._first = result
            return
        if self.error is not None:
            return
        bits, first_bits = result.view(np.uint32), self._first.view(np.uint32)
        if np.array_equal(bits, first_bits):
            return
        wrong = np.flatnonzero(bits != first_bits)
        i = int(wrong[0])
        self.error = (
            f"iteration {iteration} (timed): {wrong.size} of {self._count} elements differ from the result of "
            f"iteration 0 (first: element {i} is {result[i].item()!r}, was {self._first[i].item()!r}); the sum is "
            "deterministic, so every iteration must give the same bits"
        )

    def finish(self) -> dict[str, Any]:
        """Check iteration 0's result against the float64 sum of every rank's input; the report's ``check``."""
        assert self._first is not None, "compare() the first result first"
        args, count, lanes = self._args, self._count, self._lanes
        exact = np.zeros(count, np.float64)
        m = -(-count // lanes)
        shared = np.full(m, np.iinfo(np.int8).min, np.int16)
        padded = np.zeros(m * lanes, np.float32)
        for rank in range(args.world_size):
            x = rank_data(args.seed, rank, count, args.dtype, args.world_size)
            exact += x
            if args.dtype != "int32":
                padded[:count] = x
                np.maximum(shared, q.block_exponents(padded.reshape(m, lanes))[0], out=shared)
        del padded
        err = np.abs(self._first.astype(np.float64) - exact)
        if args.dtype == "int32":
            ok = not err.any()
        else:
            bound = q.error_bound(np.pad(exact, (0, m * lanes - count)).reshape(m, lanes), shared, args.world_size)
            ok = bool(np.all(err <= bound.reshape(-1)[:count]))
        max_error = float(err.max())
        if not ok and self.error is None:
            self.error = (
                f"iteration 0 (untimed): the result is not the sum of the ranks' inputs "
                f"({'not exact' if args.dtype == 'int32' else 'outside the error bound'}, max error {max_error:.3g})"
            )
        report: dict[str, Any] = {"ok": self.error is None, "max_error": max_error, "results_checked": self.results}
        if self.error is not None:
            report["error"] = self.error
        return report


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What no single option's type can check: the rank against the world size, the size against memory."""
    if args.rank >= args.world_size:
        parser.error(
            f"argument --rank: {args.rank} is not in 0..{args.world_size - 1} (--world-size {args.world_size})"
        )
    needed, available = memory_needed(args.size, args.dtype, args.check), available_memory()
    if available is not None and needed > available:
        parser.error(
            f"argument --size: {args.size} bytes of {args.dtype}{' with --check' if args.check else ''} needs at "
            f"least {binary_size(needed)} of memory; {binary_size(available)} is available"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from netagg.controller.client import ControllerClient, ControllerClientError

    count = args.size // 4
    data = rank_data(args.seed, args.rank, count, args.dtype, args.world_size)
    options: dict[str, Any] = {"deadline": args.deadline, "loss": args.loss, "loss_seed": args.seed}
    if args.window is not None:
        options["window"] = args.window
    try:
        controller = ControllerClient(args.controller, token_file=args.token_file)
        with AllReduceClient.join(
            controller,
            args.job,
            args.world_size,
            args.rank,
            bind=args.bind,
            lanes=args.lanes,
            join_timeout=args.join_timeout,
            **options,
        ) as client:
            check = ResultCheck(args, count, client.session.lanes) if args.check else None
            result = client.allreduce(
                data, inplace=False
            )  # untimed: warms the path and gives the value checked against the reference
            if check is not None:
                check.compare(0, result)
            times = []
            for iteration in range(1, args.iterations + 1):
                start = time.perf_counter()
                timed = client.allreduce(data, inplace=False)
                times.append(time.perf_counter() - start)
                # A wrong result does not stop the run: the other ranks expect every iteration.
                if check is not None:
                    check.compare(iteration, timed)
                del timed
            stats = client.stats
            report: dict[str, Any] = {
                "job": args.job,
                "rank": args.rank,
                "world_size": args.world_size,
                "bytes": count * 4,
                "dtype": args.dtype,
                "lanes": client.session.lanes,
                "window": client.window,
                "iterations": args.iterations,
                "mean_seconds": float(np.mean(times)),
                "best_seconds": float(np.min(times)),
                "goodput_MBps": count * 4 / float(np.mean(times)) / 1e6,
                "updates_sent": stats.updates_sent,
                "retransmissions": stats.retransmissions,
                "dropped_on_purpose": stats.dropped_on_purpose,
                "duplicate_results": stats.duplicate_results,
            }
            # SHA-256 of the result's bytes: the sum is deterministic, so every rank (and a local reference
            # computed with the quantizer) must produce the same bits.
            report["digest"] = hashlib.sha256(np.ascontiguousarray(result).tobytes()).hexdigest()
            if check is not None:
                report["check"] = check.finish()
    except (AgentError, ControllerClientError, OSError) as exc:
        print(f"netagg-agent: rank {args.rank} of job {args.job!r}: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(
            f"netagg-agent: rank {args.rank} of job {args.job!r}: out of memory for --size {args.size} "
            f"(needs at least {binary_size(memory_needed(args.size, args.dtype, args.check))}); lower --size",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        line = (
            f"rank {args.rank}/{args.world_size} job {args.job}: {count * 4} bytes {args.dtype}, "
            f"{report['lanes']} lanes, window {report['window']}: mean {report['mean_seconds'] * 1e3:.2f} ms over "
            f"{args.iterations}, goodput {report['goodput_MBps']:.2f} MB/s, "
            f"{report['retransmissions']} retransmissions"
        )
        if args.check:
            verdict = report["check"]
            line += (
                f", check {'OK' if verdict['ok'] else 'FAILED'} ({verdict['results_checked']} results, max error "
                f"{verdict['max_error']:.3g})"
            )
        print(line)
    if "error" in report.get("check", {}):
        print(
            f"netagg-agent: rank {args.rank} of job {args.job!r}: --check failed: {report['check']['error']}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
