"""``netagg-agent``: join a job and all-reduce seeded random data through the switch; prints goodput.

    netagg-agent --controller 127.0.0.1:9590 --job demo --world-size 2 --rank 0 --size 4194304

Every rank generates its data from (seed, rank), so each rank can also rebuild the others' inputs and check its
result against a float64 reference (``--check``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from netagg.host_agent import quantize as q
from netagg.host_agent.client import DEFAULT_DEADLINE, DEFAULT_LANES, AllReduceClient
from netagg.host_agent.errors import AgentError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netagg-agent",
        description="Join a netagg job through the controller and all-reduce seeded random data; prints goodput "
        "(tensor bytes per second of all-reduce time). Run one per rank, all with the same --job, --world-size, "
        "--size, --dtype and --seed.",
    )
    parser.add_argument(
        "--controller",
        default="127.0.0.1:9590",
        metavar="HOST:PORT",
        help="the controller's job API (default 127.0.0.1:9590)",
    )
    parser.add_argument("--job", required=True, help="job name shared by all ranks")
    parser.add_argument("--world-size", type=int, required=True, metavar="N")
    parser.add_argument("--rank", type=int, required=True, metavar="R")
    parser.add_argument("--size", type=int, required=True, metavar="BYTES", help="tensor size in bytes")
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
        type=int,
        default=None,
        metavar="W",
        help="slots in flight (default: the client's default, at most the granted slots)",
    )
    parser.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="P",
        help="drop this fraction of the agent's outgoing packets (seeded), to exercise recovery",
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="local IPv4 address for the agent's UDP socket (default 127.0.0.1)",
    )
    parser.add_argument(
        "--iterations", type=int, default=3, metavar="K", help="timed all-reduces (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help=f"fail an all-reduce that takes longer than this (default {DEFAULT_DEADLINE:g})",
    )
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for all ranks to join (default 60)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="rebuild every rank's input and check the result against a float64 reference",
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


def check_result(result: np.ndarray, args: argparse.Namespace, count: int, lanes: int) -> dict[str, Any]:
    """Compare with the float64 sum of every rank's input; float results within the quantizer's bound."""
    inputs = [rank_data(args.seed, r, count, args.dtype, args.world_size) for r in range(args.world_size)]
    exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    if args.dtype == "int32":
        ok = bool(np.array_equal(result.astype(np.float64), exact))
        return {"ok": ok, "max_error": float(np.max(np.abs(result - exact))) if count else 0.0}
    m = -(-count // lanes)
    padded = np.zeros((len(inputs), m * lanes), np.float32)
    for i, x in enumerate(inputs):
        padded[i, :count] = x
    shared = np.max([q.block_exponents(p.reshape(m, lanes))[0].astype(np.int16) for p in padded], axis=0)
    bound = q.error_bound(np.pad(exact, (0, m * lanes - count)).reshape(m, lanes), shared, len(inputs))
    err = np.abs(result.astype(np.float64) - exact)
    ok = bool(np.all(err <= bound.reshape(-1)[:count]))
    return {"ok": ok, "max_error": float(err.max()) if count else 0.0}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.size < 4 or args.iterations < 1:
        print("netagg-agent: --size must be at least 4 bytes and --iterations at least 1", file=sys.stderr)
        return 2
    from netagg.controller.client import ControllerClient, ControllerClientError

    count = args.size // 4
    data = rank_data(args.seed, args.rank, count, args.dtype, args.world_size)
    options: dict[str, Any] = {"deadline": args.deadline, "loss": args.loss, "loss_seed": args.seed}
    if args.window is not None:
        options["window"] = args.window
    try:
        controller = ControllerClient(args.controller)
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
            result = client.allreduce(
                data, inplace=False
            )  # untimed: warms the path and gives the checked value
            times = []
            for _ in range(args.iterations):
                start = time.perf_counter()
                client.allreduce(data, inplace=False)
                times.append(time.perf_counter() - start)
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
            if args.check:
                report["check"] = check_result(result, args, count, client.session.lanes)
    except (AgentError, ControllerClientError, OSError) as exc:
        print(f"netagg-agent: rank {args.rank} of job {args.job!r}: {exc}", file=sys.stderr)
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
            check = report["check"]
            line += f", check {'OK' if check['ok'] else 'FAILED'} (max error {check['max_error']:.3g})"
        print(line)
    return 0 if report.get("check", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
