"""One host of a BML synchronization over BCube; prints one JSON line.

python -m bench.bml.rank --plan PLAN.json --host H --size BYTES [--repeat K] [--seed S]

The host's gradient is ``gradient(H, BYTES // 4, S)`` (random int32: whoever knows the seed can check the sum).
It connects to its peers on every card, runs one untimed synchronization, then K timed ones, each after a barrier;
every timed one is reported with its start on ``time.monotonic`` (one clock for every namespace). For the last
one it reports the elements it sent and received per stage and card (the schedule's count, as the transport
moved them) and each card's bytes as the kernel counted them (``/proc/self/net/dev``, after its sends are
acknowledged), and the SHA-256 of its result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from netagg.host_agent.bml_transport import BML_PORT, BmlError, BmlPeers, BmlPlan


def gradient(host: int, count: int, seed: int) -> np.ndarray:
    """Host ``host``'s int32 gradient of ``count`` elements for ``seed`` (uniform over all int32 values)."""
    rng = np.random.default_rng([seed, host])
    return rng.integers(-(2**31), 2**31, size=count, dtype=np.int64).astype(np.int32)


def interface_bytes(names: list[str]) -> dict[str, tuple[int, int]]:
    """Interface -> (bytes sent, bytes received) in this process's network namespace."""
    found: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/self/net/dev").read_text().splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() in names:
            fields = counters.split()
            found[name.strip()] = (int(fields[8]), int(fields[0]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True, help="the BCube's address plan (JSON)")
    parser.add_argument("--host", type=int, required=True, help="this host's index, 0..n**k-1")
    parser.add_argument("--size", type=int, required=True, help="int32 gradient size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="timed synchronizations (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gradients (default 0)")
    parser.add_argument("--port", type=int, default=BML_PORT, help=f"TCP port on every card (default {BML_PORT})")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of setup and of each sync, seconds")
    args = parser.parse_args(argv)
    try:
        plan = BmlPlan.load(args.plan)
    except ValueError as exc:
        parser.error(str(exc))
    if plan.interfaces is None:
        parser.error(f"{args.plan}: the plan names no interfaces (this runner reads their byte counters)")
    cube, addresses, interfaces = plan.cube, plan.addresses, list(plan.interfaces[args.host])
    grad = gradient(args.host, args.size // 4, args.seed)
    try:
        started = time.monotonic()
        with BmlPeers(cube, args.host, addresses, port=args.port, timeout=args.timeout) as peers:
            connected = time.monotonic() - started
            peers.allreduce(grad.copy())  # untimed: connections and buffers warm
            runs = []
            result = grad
            for _ in range(args.repeat):
                result = grad.copy()
                peers.barrier()
                before = interface_bytes(interfaces)
                start = time.monotonic()
                peers.allreduce(result)
                runs.append({"start": start, "seconds": time.monotonic() - start})
            peers.drain()
            after = interface_bytes(interfaces)
            bound = {level: sorted(addrs) for level, addrs in peers.card_addresses().items()}
            traffic = [[stage, level, sent, got] for (stage, level), (sent, got) in sorted(peers.traffic.items())]
            peers.barrier()  # nobody closes a connection a peer still reads from
    except BmlError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    report = {
        "host": args.host,
        "bytes": grad.nbytes,
        "connect_seconds": connected,
        "runs": runs,
        "digest": hashlib.sha256(result.tobytes()).hexdigest(),
        "traffic": traffic,
        "bound": {str(level): addrs for level, addrs in bound.items()},
        "cards": {
            intf: {"tx": after[intf][0] - before[intf][0], "rx": after[intf][1] - before[intf][1]}
            for intf in interfaces
            if intf in before and intf in after
        },
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
