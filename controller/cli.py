"""``netagg-controller``: run the controller, or query a running one."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .api import DEFAULT_API_HOST, DEFAULT_API_PORT, parse_address
from .client import ControllerClient, ControllerClientError
from .errors import ControllerError

_DEFAULT_API = f"{DEFAULT_API_HOST}:{DEFAULT_API_PORT}"
_TOKEN_HELP = ("the job API's token file (default: $NETAGG_TOKEN, else $NETAGG_TOKEN_FILE, else "
               "~/.config/netagg/controller.token)")


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (float() also takes "nan" and "inf")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netagg-controller",
        description="Control plane of netagg: programs the switch over P4Runtime and admits jobs over HTTP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="program the switch and serve the job API until SIGINT/SIGTERM",
                         description="Connect to the switch, push the pipeline, install the topology's static "
                                     "state, and serve the job API until SIGINT or SIGTERM.")
    run.add_argument("--config", required=True, type=Path, metavar="FILE",
                     help="topology/config file (TOML; format in docs/controller.md)")
    run.add_argument("--api-addr", default=_DEFAULT_API, metavar="HOST:PORT",
                     help=f"address the job API listens on (default {_DEFAULT_API}; it is plain HTTP: keep it on "
                          f"loopback or a management network, see docs/security.md)")
    run.add_argument("--token-file", type=Path, metavar="FILE",
                     help="the job API's token file, created (mode 0600) with a new random token when missing "
                          "(default: [api] token_file of the config, else ~/.config/netagg/controller.token)")
    run.add_argument("--p4info", type=Path, metavar="FILE",
                     help="P4Info text file of the pipeline (default: the one committed under p4/v1model/build/)")
    run.add_argument("--bmv2-json", type=Path, metavar="FILE",
                     help="BMv2 JSON of the pipeline, pushed with the P4Info (default: the committed one)")
    run.add_argument("--connect-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                     help="how long to wait for the switch at start before giving up (default 30)")
    run.add_argument("--lease", type=_seconds, metavar="SECONDS",
                     help="tear a job down when one of its ranks sends no heartbeat for this long "
                          "(default: [jobs] lease_seconds of the config, else 30)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="logging verbosity (default INFO)")

    stats = sub.add_parser("stats", help="show a running controller's per-job and per-switch counters",
                           description="Show packets aggregated, results multicast, retransmissions answered "
                                       "and drops by reason, per job and for the switch.")
    stats.add_argument("--api-addr", default=_DEFAULT_API, metavar="HOST:PORT",
                       help=f"job API of the running controller (default {_DEFAULT_API})")
    stats.add_argument("--token-file", type=Path, metavar="FILE", help=_TOKEN_HELP)
    stats.add_argument("--job", metavar="NAME", help="only this job (and the switch-wide drops)")
    stats.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")

    jobs = sub.add_parser("jobs", help="list a running controller's jobs",
                          description="List active and joining jobs with their ids, slots, epochs and workers.")
    jobs.add_argument("--api-addr", default=_DEFAULT_API, metavar="HOST:PORT",
                      help=f"job API of the running controller (default {_DEFAULT_API})")
    jobs.add_argument("--token-file", type=Path, metavar="FILE", help=_TOKEN_HELP)
    jobs.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        client = ControllerClient(args.api_addr, token_file=args.token_file)
        if args.command == "stats":
            reply = client.stats(args.job)
            print(json.dumps(reply, indent=2) if args.json else format_stats(reply))
        else:
            reply = client.jobs()
            print(json.dumps(reply, indent=2) if args.json else format_jobs(reply))
        return 0
    except (ControllerError, ControllerClientError, OSError, ValueError) as ex:
        print(f"netagg-controller: {ex}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    # Imported here so `stats` and `jobs` start fast and need no P4Runtime stack.
    from .service import DEFAULT_BMV2_JSON, DEFAULT_P4INFO, Controller
    from .topology import load_topology

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        logging.getLogger("finsy").setLevel(logging.WARNING)
    # finsy logs every P4Runtime message at DEBUG, write requests with the workers' keys among them: never.
    logging.getLogger("finsy.msg").setLevel(logging.INFO)
    topology = load_topology(args.config)
    controller = Controller(
        topology,
        p4info=args.p4info or DEFAULT_P4INFO,
        bmv2_json=args.bmv2_json or DEFAULT_BMV2_JSON,
        api_address=parse_address(args.api_addr),
        lease_seconds=args.lease,
        token_file=args.token_file,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info("%s received; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    controller.start(args.connect_timeout)
    try:
        while not stop.wait(1.0):  # wake up now and then so signals are handled promptly
            pass
    finally:
        controller.stop()
    return 0


def format_stats(reply: dict[str, Any]) -> str:
    """Human-readable tables of a /v1/stats reply (packet counts)."""
    lines = ["switch drops:"]
    drops = reply["switch"]["drops"]
    lines += [f"  {name:<20} {value['packets']:>12}" for name, value in drops.items()]
    for name, job in reply["jobs"].items():
        lines.append(f"job {name} (id {job['job_id']}, {job.get('state', 'active')}):")
        for key, value in job.items():
            if isinstance(value, dict) and "packets" in value:
                lines.append(f"  {key:<20} {value['packets']:>12}")
        nonzero = {k: v["packets"] for k, v in job["drops"].items() if v["packets"]}
        lines.append("  drops: " + (", ".join(f"{k} {v}" for k, v in nonzero.items()) or "none"))
    return "\n".join(lines)


def format_jobs(reply: dict[str, Any]) -> str:
    pool = reply["pool"]
    lines = [f"pool: {pool['free']} of {pool['size']} slots free"]
    if not reply["jobs"]:
        lines.append("no jobs")
    for job in reply["jobs"]:
        lines.append(
            f"{job['job']}: {job['state']}, id {job['job_id']}, {job['world_size']} workers, {job['lanes']} lanes, "
            f"slots {job['pool_base']}..{job['pool_base'] + job['slots'] - 1}"
            + (f", epoch {job['epoch']}" if "epoch" in job else f", joined {job.get('joined')}")
        )
        for w in job.get("workers", []):
            state = "left" if w["left"] else f"last heartbeat {w['silent_seconds']:.1f} s ago"
            where = (f"{w['addr']}:{w['port']} (switch port {w['switch_port']})" if "addr" in w
                     else "(a job of another credential)")
            lines.append(f"  rank {w['rank']}: {where}, {state}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
