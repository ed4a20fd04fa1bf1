"""One rank of a torch gloo all-reduce on loopback; prints one JSON line (the reference for bench.agent).

python -m bench.gloo_allreduce --rank R --world-size N --port P --megabytes M
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="TCP port of rank 0's rendezvous store")
    parser.add_argument("--megabytes", type=float, required=True, help="float32 tensor size in MiB")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=args.world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        count = int(args.megabytes * 2**20) // 4
        gen = torch.Generator().manual_seed(args.rank)
        x = torch.randn(count, generator=gen)
        dist.all_reduce(x.clone())  # untimed, as netagg-agent does: connections and buffers warm
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(x)
        seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "rank": args.rank,
                    "bytes": count * 4,
                    "mean_seconds": seconds,
                    "goodput_MBps": count * 4 / seconds / 1e6,
                }
            ),
            flush=True,
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
