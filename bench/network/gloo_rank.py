"""One rank of gloo's ring all-reduce between network namespaces; prints one JSON line.

python -m bench.network.gloo_rank --rank R --world-size N --master ADDR:PORT --interface IF --size BYTES --repeat K

One untimed all-reduce (connections and buffers warm, as ``netagg-agent`` does), then K timed ones, each after a
barrier; every timed one is reported with its start on ``time.monotonic`` (one clock for every process of the
machine, whatever their namespaces), so the benchmark can place CPU samples inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master", required=True, help="rank 0's data address and rendezvous port, ADDR:PORT")
    parser.add_argument("--interface", required=True, help="the data interface gloo's connections use")
    parser.add_argument("--size", type=int, required=True, help="float32 tensor size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="timed all-reduces (default 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="gloo's timeout per operation, seconds")
    args = parser.parse_args(argv)
    # Gloo picks its device from this interface: the data link, not the management link.
    os.environ["GLOO_SOCKET_IFNAME"] = args.interface
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{args.master}",
        rank=args.rank,
        world_size=args.world_size,
        timeout=timedelta(seconds=args.timeout),
    )
    try:
        x = torch.randn(args.size // 4, generator=torch.Generator().manual_seed(args.rank))
        dist.all_reduce(x.clone())
        runs = []
        for _ in range(args.repeat):
            y = x.clone()
            dist.barrier()
            start = time.monotonic()
            dist.all_reduce(y)
            runs.append({"start": start, "seconds": time.monotonic() - start})
        print(json.dumps({"rank": args.rank, "bytes": args.size // 4 * 4, "runs": runs}), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
