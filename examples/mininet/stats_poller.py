"""Poll the controller's statistics and print one JSON line per poll (runs inside the switch's namespace).

    python -m examples.mininet.stats_poller --api-addr 127.0.0.1:9590 --interval 0.5

The demo reads these lines for its progress display and its summary: the job's counters are gone from the
controller once every rank has left, so the last line that still had them is the one the summary shows.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from types import FrameType

from netagg.controller.client import ControllerClient, ControllerClientError


def main() -> int:
    parser = argparse.ArgumentParser(prog="stats_poller", description=__doc__.splitlines()[0])
    parser.add_argument("--api-addr", required=True, metavar="HOST:PORT")
    parser.add_argument("--interval", type=float, default=0.5, metavar="SECONDS")
    args = parser.parse_args()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = ControllerClient(args.api_addr, timeout=max(1.0, 4 * args.interval))
    while not stop.is_set():
        try:
            line = {"time": time.time(), "stats": client.stats()}
        except (ControllerClientError, OSError, ValueError) as exc:
            line = {"time": time.time(), "error": str(exc)}
        print(json.dumps(line, separators=(",", ":")), flush=True)
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
