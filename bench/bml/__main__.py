"""``python -m bench.bml``: BML on BCube(n, k) against a ring all-reduce and netagg, same rate per card (as root).

For every size: BML on BCube(n, k) (k cards per host), BML on BCube(N, 1) (the same N = n**k hosts on one card, the
same transport), gloo's ring over a Linux bridge and netagg through the softswitch on N hosts with one card each
(``bench.network``'s star and runners). The note (``bml.md``), its plot and the raw figures go to --out. Every
namespace, bridge and process made is taken down on exit, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from examples.mininet.commands import NetworkError
from examples.mininet.network import Teardown
from examples.mininet.processes import ProcessError
from examples.mininet.signals import install_handlers, interrupts_ignored
from netagg.constants import MAX_WORKERS
from netagg.host_agent.bml import BCube

from ..network.__main__ import _list, check_environment
from ..network.report import Summary
from ..network.runners import Point, RunError, run_gloo, run_netagg
from ..network.topology import BenchNetwork, BenchNetworkError
from . import report
from .runner import bml_system, run_bml
from .topology import BCubeNetwork, bcube_for

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
SYSTEMS = ("bml", "bml1", "ring", "netagg")
FULL = {"sizes": "1,4,16", "repeat": 3}
QUICK = {"sizes": "1", "repeat": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.bml", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="one size (1 MiB), one repetition, note in a temporary folder")
    p.add_argument("--hosts", type=int, default=9, help="hosts N (default 9; with --cards, a BCube: N = n**k)")
    p.add_argument("--cards", type=int, default=2, help="network cards per host, k (default 2)")
    p.add_argument("--rate", type=float, default=20.0, help="rate of every card's link, Mbit/s (default 20)")
    p.add_argument("--sizes", type=_list(float), help=f"gradient sizes, MiB (default {FULL['sizes']})")
    p.add_argument("--repeat", type=int, help=f"timed synchronizations per point (default {FULL['repeat']})")
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="which to run, comma-separated: bml (k cards), bml1 (one card), ring (gloo), netagg "
        f"(default {','.join(SYSTEMS)})",
    )
    p.add_argument("--out", type=Path, default=None, help="note folder (default docs/repro; --quick: a temporary one)")
    return p


class Repro:
    def __init__(self, args: argparse.Namespace, cube: BCube) -> None:
        self.args = args
        self.cube = cube
        self.points: list[Point] = []
        self.serial = 0
        self.qdisc = ""
        self.log_dir = Path(tempfile.mkdtemp(prefix="netagg-bml-"))
        self.started = time.monotonic()
        self.network: BCubeNetwork | BenchNetwork | None = None

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f} s] {text}", flush=True)

    def _point(self, fn: Callable[[], Point], failed: Point) -> None:
        self.serial += 1
        try:
            point = fn()
        except (RunError, ProcessError, NetworkError, BenchNetworkError) as exc:
            failed.error = str(exc)
            point = failed
            self.say(f"error: {failed.system}, {failed.size / MIB:g} MiB: {exc}")
        self.points.append(point)
        s = Summary.of(point)
        if s is not None:
            self.say(
                f"point: {point.system} {point.size / MIB:g} MiB: median {s.median:.3f} s "
                f"({s.low:.3f}-{s.high:.3f}), load {point.load_before[0]:.1f} -> {point.load_after[0]:.1f}"
            )

    def run_bcube(self, cube: BCube, sizes: list[int]) -> None:
        self.say(f"network: BCube({cube.n},{cube.k}), {self.args.rate:g} Mbit/s per card")
        net = BCubeNetwork(cube, self.args.rate, self.log_dir)
        self.network = net
        try:
            net.build()
            self.qdisc = net.qdisc_shaping()
            for size in sizes:
                self.say(f"progress: BML BCube({cube.n},{cube.k}) {size / MIB:g} MiB x {self.args.repeat}")
                self._point(
                    lambda size=size: run_bml(net, size, self.args.repeat, self.serial, self.say),
                    Point(bml_system(net), cube.hosts, self.args.rate, size),
                )
        finally:
            self.close_network()

    def run_star(self, sizes: list[int], ring: bool, netagg: bool) -> None:
        hosts, rate, repeat = self.cube.hosts, self.args.rate, self.args.repeat
        self.say(f"network: {hosts} hosts on one switch node, {rate:g} Mbit/s")
        bn = BenchNetwork(hosts, rate, self.log_dir)
        self.network = bn
        try:
            bn.build()
            if ring:
                bn.bridge_up()
                for size in sizes:
                    self.say(f"progress: gloo ring {size / MIB:g} MiB x {repeat}")
                    self._point(
                        lambda size=size: run_gloo(bn, size, repeat, self.serial, self.say),
                        Point("gloo", hosts, rate, size),
                    )
                bn.bridge_down()
            if netagg:
                bn.start_netagg()
                for size in sizes:
                    self.say(f"progress: netagg {size / MIB:g} MiB x {repeat}")
                    self._point(
                        lambda size=size: run_netagg(
                            bn, size, repeat, self.serial, self.say, lanes=report.LANES, window=None, loss=0.0
                        ),
                        Point("netagg-softswitch", hosts, rate, size, lanes=report.LANES),
                    )
        finally:
            self.close_network()

    def close_network(self) -> None:
        net, self.network = self.network, None
        if net is None:
            return
        with interrupts_ignored():
            done: Teardown = net.close()
        if done.problems:
            self.say(f"teardown: {done.describe()}; problems:\n  " + "\n  ".join(done.problems))
            raise BenchNetworkError("teardown left something behind: " + "; ".join(done.problems))
        self.say(f"teardown: {done.describe()}")

    def run(self, systems: list[str]) -> int:
        args, cube = self.args, self.cube
        sizes = [int(s * MIB) for s in args.sizes]
        self.say(f"logs: {self.log_dir}")
        if "bml" in systems:
            self.run_bcube(cube, sizes)
        if "bml1" in systems and cube.k > 1:
            self.run_bcube(BCube(cube.hosts, 1), sizes)
        if "ring" in systems or "netagg" in systems:
            self.run_star(sizes, "ring" in systems, "netagg" in systems)
        names = {
            f"bml-{cube.n},{cube.k}": f"BML BCube({cube.n},{cube.k})",
            f"bml-{cube.hosts},1": "BML one card",
            "gloo": "ring (gloo)",
            "netagg-softswitch": "netagg",
        }
        ran = [s for s in names if any(p.system == s for p in self.points)]
        settings = {
            "command": " ".join(["python -m bench.bml", *sys.argv[1:]]),
            "argv": sys.argv[1:],
            "n": cube.n,
            "cards": cube.k,
            "hosts": cube.hosts,
            "rate_mbit": args.rate,
            "sizes_mib": args.sizes,
            "repeat": args.repeat,
            "qdisc": self.qdisc,
            "bml_system": f"bml-{cube.n},{cube.k}",
            "systems": ran,
            "names": names,
        }
        path = report.write(self.points, settings, args.out)
        self.say(f"report: {path}")
        return 1 if any(p.error for p in self.points) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.sizes = args.sizes or _list(float)(defaults["sizes"])
    args.repeat = args.repeat or defaults["repeat"]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or not systems:
        parser.error(f"--systems {args.systems!r}: choose from {', '.join(SYSTEMS)}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="netagg-bml-report-")) if args.quick else REPO / "docs" / "repro"
    try:
        cube = bcube_for(args.hosts, args.cards)
    except BenchNetworkError as exc:
        parser.error(f"--hosts {args.hosts} --cards {args.cards}: {exc}")
    if not 2 <= cube.hosts <= MAX_WORKERS:
        parser.error(f"--hosts {cube.hosts}: netagg's jobs have 2..{MAX_WORKERS} workers")
    if args.rate <= 0 or any(s <= 0 for s in args.sizes) or args.repeat < 1:
        parser.error("--rate and --sizes must be > 0, --repeat >= 1")
    why = check_environment()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    repro = Repro(args, cube)
    install_handlers()
    try:
        status = repro.run(systems)
    except KeyboardInterrupt:
        repro.say("interrupted: tearing down")
        status = 130
    except (BenchNetworkError, NetworkError, ProcessError) as exc:
        repro.say(f"error: {exc}")
        status = 1
    finally:
        try:
            repro.close_network()
        except BenchNetworkError as exc:
            repro.say(f"error: {exc}")
            status = 1
    if status == 0:
        shutil.rmtree(repro.log_dir, ignore_errors=True)
    else:
        repro.say(f"logs kept in {repro.log_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
