"""``python -m bench.network``: netagg against gloo's ring all-reduce on one emulated, shaped network (as root).

For every host count n and link rate: build the network (n hosts on one switch node, both ends of every host
link shaped the same), run gloo over a Linux bridge for every size, then netagg through the softswitch for every
size, then (at one n, rate and size) netagg under the switch's simulated loss; BMv2 too when simple_switch_grpc
is on PATH (smallest sizes, lowest rate). Tear the network down, next. The report (markdown, PNG plots, raw
JSON) goes to --out. Everything made is taken down on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from examples.mininet.commands import NetworkError
from examples.mininet.processes import ProcessError
from examples.mininet.signals import install_handlers, interrupts_ignored
from examples.mininet.switches import Bmv2Target
from netagg.constants import LANE_COUNTS, MAX_WORKERS

from . import report
from .runners import Point, RunError, run_gloo, run_netagg
from .topology import BenchNetwork, BenchNetworkError, bmv2_available

MIB = 1 << 20
FULL = {"hosts": "2,4,8", "rates": "20,50,100", "sizes": "1,4,16,64", "repeat": 3}
QUICK = {"hosts": "2,4", "rates": "20", "sizes": "1", "repeat": 3}
#: Loss rates in percent (per port and direction at the switch's drop simulator).
LOSS_PERCENT = "0,0.01,0.1,1,10"
QUICK_LOSS_PERCENT = "0,1"
REPO = Path(__file__).resolve().parents[2]
#: BMv2 aggregates a few hundred packets per second: it runs at small sizes, on at most this many hosts.
BMV2_MAX_HOSTS = 4


def _list(kind: Callable[[str], float | int], empty: bool = False) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if (not values and not empty) or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers >= 0")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.network", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a two-minute look: n={QUICK['hosts']}, {QUICK['rates']} Mbit/s, {QUICK['sizes']} MiB, "
        f"loss {QUICK_LOSS_PERCENT} %%, no component benchmarks, report in a new temporary folder",
    )
    p.add_argument("--hosts", type=_list(int), help=f"host counts (default {FULL['hosts']})")
    p.add_argument("--rates", type=_list(float), help=f"link rates, Mbit/s (default {FULL['rates']})")
    p.add_argument("--sizes", type=_list(float), help=f"tensor sizes, MiB (default {FULL['sizes']})")
    p.add_argument("--repeat", type=int, help=f"repetitions per point (default {FULL['repeat']})")
    p.add_argument(
        "--loss", type=_list(float, empty=True), help=f"loss rates in %% (default {LOSS_PERCENT}; empty: none)"
    )
    p.add_argument(
        "--loss-point",
        default=None,
        metavar="N,MBIT,MIB",
        help="where the loss curve is measured (default: 4 hosts or the largest below, the lowest "
        "rate, 4 MiB or the largest size below)",
    )
    p.add_argument("--lanes", type=int, choices=LANE_COUNTS, default=256, help="netagg lanes per packet")
    p.add_argument("--window", type=int, default=None, help="netagg window (default: the agent's)")
    p.add_argument(
        "--bmv2",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also run netagg through BMv2 at the lowest rate, on up to 4 hosts (auto: when simple_switch_grpc "
        "is on PATH; not with --quick)",
    )
    p.add_argument("--bmv2-max-mib", type=float, default=0.25, help="largest size BMv2 runs (default 0.25 MiB)")
    p.add_argument("--no-gloo", action="store_true", help="netagg only")
    p.add_argument(
        "--components",
        choices=("yes", "no"),
        default=None,
        help="run `python -m bench` and add its output to the report (default: yes, no with --quick)",
    )
    p.add_argument(
        "--render",
        type=Path,
        metavar="DIR",
        help="only rewrite DIR's README.md and plots from its results.json (no network, no root)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default docs/benchmarks; with --quick a new temporary folder)",
    )
    return p


def _loss_point(args: argparse.Namespace) -> tuple[int, float, int]:
    if args.loss_point:
        try:
            n, rate, mib = args.loss_point.split(",")
            return int(n), float(rate), int(float(mib) * MIB)
        except ValueError:
            raise SystemExit(f"--loss-point {args.loss_point!r}: expected N,MBIT,MIB, e.g. 4,20,4") from None
    hosts = [h for h in args.hosts if h <= 4] or args.hosts
    sizes = [s for s in args.sizes if s <= 4] or args.sizes
    return max(hosts), min(args.rates), int(max(sizes) * MIB)


def check_environment() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, raw sockets, tc): run it with sudo"
    for tool in ("mnexec", "ip", "ethtool", "tc", "ping"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH: `make install` installs the Debian packages it needs"
    return None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.points: list[Point] = []
        self.serial = 0
        self.log_dir = Path(tempfile.mkdtemp(prefix="netagg-bench-network-"))
        self.started = time.monotonic()
        self.network: BenchNetwork | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)

    def _point(self, fn: Callable[[], Point], failed: Point) -> None:
        self.serial += 1
        try:
            point = fn()
        except (RunError, ProcessError, NetworkError, BenchNetworkError) as exc:
            failed.error = str(exc)
            point = failed
            self.say(f"error: {failed.system}, n={failed.hosts}, {failed.size / MIB:g} MiB: {exc}")
        self.points.append(point)
        s = report.Summary.of(point)
        if s is not None:
            self.say(
                f"point: {point.system} n={point.hosts} {point.rate_mbit:g} Mbit/s {point.size / MIB:g} MiB "
                f"loss {point.loss * 100:g} %: median {s.median:.3f} s ({s.low:.3f}-{s.high:.3f}), load "
                f"{point.load_before[0]:.1f} -> {point.load_after[0]:.1f}"
            )

    def run_network(
        self, hosts: int, rate: float, target: str, sizes: list[int], gloo: bool, losses: list[float]
    ) -> None:
        args = self.args
        self.say(f"network: {hosts} hosts, {rate:g} Mbit/s, {target}")
        bn = BenchNetwork(hosts, rate, self.log_dir, target=target)
        self.network = bn
        try:
            bn.build()
            self.qdisc = bn.qdisc_shaping()
            if gloo:
                bn.bridge_up()
                for size in sizes:
                    self.say(f"progress: gloo n={hosts} {rate:g} Mbit/s {size / MIB:g} MiB x {args.repeat}")
                    self._point(
                        lambda size=size: run_gloo(bn, size, args.repeat, self.serial, self.say),
                        Point("gloo", hosts, rate, size),
                    )
                bn.bridge_down()
            window = (
                args.window if args.window is not None else (Bmv2Target.default_window if target == "bmv2" else None)
            )
            bn.start_netagg()
            self.say(f"progress: {target} pid {bn.switch_pid()} and controller up")
            for size in sizes:
                self.say(f"progress: netagg ({target}) n={hosts} {rate:g} Mbit/s {size / MIB:g} MiB x {args.repeat}")
                self._point(
                    lambda size=size: run_netagg(
                        bn, size, args.repeat, self.serial, self.say, lanes=args.lanes, window=window, loss=0.0
                    ),
                    Point(f"netagg-{target}", hosts, rate, size, lanes=args.lanes),
                )
            for loss in losses:
                bn.stop_netagg()
                bn.start_netagg(loss)
                size = self.loss_size
                self.say(f"progress: netagg loss {loss * 100:g} % n={hosts} {rate:g} Mbit/s {size / MIB:g} MiB")
                self._point(
                    lambda size=size, loss=loss: run_netagg(
                        bn, size, args.repeat, self.serial, self.say, lanes=args.lanes, window=window, loss=loss
                    ),
                    Point(f"netagg-{target}", hosts, rate, size, loss=loss, lanes=args.lanes),
                )
        finally:
            self.close_network()

    def close_network(self) -> None:
        bn, self.network = self.network, None
        if bn is None:
            return
        with interrupts_ignored():
            done = bn.close()
        if done.problems:
            self.say(f"teardown: {done.describe()}; problems:\n  " + "\n  ".join(done.problems))
            raise BenchNetworkError("teardown left something behind: " + "; ".join(done.problems))
        self.say(f"teardown: {done.describe()}")

    def run(self) -> int:
        args = self.args
        sizes = [int(s * MIB) for s in args.sizes]
        loss_hosts, loss_rate, self.loss_size = _loss_point(args)
        losses = [p / 100 for p in args.loss if p > 0]
        self.qdisc = ""
        bmv2 = args.bmv2 == "yes" or (args.bmv2 == "auto" and not args.quick and bmv2_available())
        self.say(f"logs: {self.log_dir}")
        for hosts in args.hosts:
            for rate in args.rates:
                here = losses if (hosts, rate) == (loss_hosts, loss_rate) else []
                if here and self.loss_size not in sizes:
                    sizes_here = sorted({*sizes, self.loss_size})
                else:
                    sizes_here = sizes
                self.run_network(hosts, rate, "softswitch", sizes_here, not args.no_gloo, here)
        if bmv2:
            largest = int(args.bmv2_max_mib * MIB)
            small = [s for s in sizes if s <= largest] or [largest]
            for hosts in [h for h in args.hosts if h <= BMV2_MAX_HOSTS] or [min(args.hosts)]:
                self.run_network(hosts, min(args.rates), "bmv2", small, False, [])
        components = self.components() if args.components == "yes" else ""
        settings = {
            "command": " ".join(["python -m bench.network", *sys.argv[1:]]),
            "argv": sys.argv[1:],
            "hosts": args.hosts,
            "rates": args.rates,
            "sizes_mib": args.sizes,
            "repeat": args.repeat,
            "loss_percent": args.loss,
            "lanes": args.lanes,
            "window": args.window,
            "qdisc": self.qdisc,
            "targets": "the softswitch" + (" and BMv2" if bmv2 else ""),
        }
        path = report.write(self.points, settings, components, args.out)
        self.say(f"report: {path}")
        failed = [p for p in self.points if p.error]
        return 1 if failed else 0

    def components(self) -> str:
        self.say("progress: component benchmarks (python -m bench)")
        done = subprocess.run(
            [sys.executable, "-m", "bench"], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
        )
        return done.stdout + (f"\n(exit status {done.returncode}: {done.stderr[-2000:]})" if done.returncode else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render is not None:
        try:
            points, settings = report.load(args.render / "results.json")
            data = json.loads((args.render / "results.json").read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--render {args.render}: cannot read its results.json: {exc}")
        print(f"report: {report.write(points, settings, data.get('components', ''), args.render, data['machine'])}")
        return 0
    defaults = QUICK if args.quick else FULL
    args.hosts = args.hosts or _list(int)(defaults["hosts"])
    args.rates = args.rates or _list(float)(defaults["rates"])
    args.sizes = args.sizes or _list(float)(defaults["sizes"])
    args.repeat = args.repeat or defaults["repeat"]
    if args.loss is None:
        args.loss = _list(float)(QUICK_LOSS_PERCENT if args.quick else LOSS_PERCENT)
    if args.components is None:
        args.components = "no" if args.quick else "yes"
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="netagg-bench-network-report-"))
            if args.quick
            else (REPO / "docs" / "benchmarks")
        )
    bad_hosts = [h for h in args.hosts if not 2 <= h <= MAX_WORKERS]
    if bad_hosts:
        parser.error(f"--hosts {bad_hosts}: each must be in 2..{MAX_WORKERS}")
    if any(r <= 0 for r in args.rates) or any(s <= 0 for s in args.sizes):
        parser.error("--rates and --sizes must be > 0")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if any(p >= 100 for p in args.loss):
        parser.error("--loss: each rate must be below 100 %")
    why = check_environment()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    bench = Bench(args)
    install_handlers()
    try:
        status = bench.run()
    except KeyboardInterrupt:
        bench.say("interrupted: tearing down")
        status = 130
    finally:
        try:
            bench.close_network()
        except BenchNetworkError as exc:
            bench.say(f"error: {exc}")
            status = 1
    if status == 0:
        shutil.rmtree(bench.log_dir, ignore_errors=True)
    else:
        bench.say(f"logs kept in {bench.log_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
