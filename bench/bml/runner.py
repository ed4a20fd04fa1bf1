"""One measured point of BML on a ``BCubeNetwork``: one process per host (``bench.bml.rank``), checked bit-exact.

Like ``bench.network``'s gloo point: one process group per point, an untimed synchronization, then the timed
ones after a barrier each; a repetition's time is its slowest host's. Every host's result must have the digest
of the exact int32 sum of every host's gradient, computed here from the seed.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import numpy as np

from examples.mininet.processes import Managed
from netagg.host_agent.bml import BCube

from ..network.cpu import CpuSampler, load_average
from ..network.model import gloo_bound_seconds
from ..network.runners import START_ALLOWANCE_S, Point, RunError, Say, last_json, timed_reps, wait_all
from .rank import gradient
from .topology import BCubeNetwork

#: A new TCP port per point, so no listening port of an earlier point's host can be in the way.
BML_PORT_BASE = 29700


def expected_digest(hosts: int, count: int, seed: int) -> str:
    """SHA-256 of the wrapping int32 sum of every host's gradient (what every host must end with)."""
    total = np.zeros(count, dtype=np.int32)
    with np.errstate(over="ignore"):
        for host in range(hosts):
            total += gradient(host, count, seed)
    return hashlib.sha256(total.tobytes()).hexdigest()


def bml_bound_seconds(size: int, rate_mbit: float, cube: BCube) -> float:
    """Shortest BML sync: each card sends 2(N-1)/N of the gradient over k (N = n**k), in full TCP segments."""
    return gloo_bound_seconds(size, rate_mbit, cube.hosts) / cube.k


def bml_system(net: BCubeNetwork) -> str:
    return f"bml-{net.cube.n},{net.cube.k}"


def run_bml(net: BCubeNetwork, size: int, repeat: int, serial: int, say: Say, seed: int = 0) -> Point:
    """BML's synchronization of ``size`` bytes of int32 on every host of ``net``, every card at once."""
    cube = net.cube
    point = Point(bml_system(net), cube.hosts, net.rate_mbit, size, load_before=load_average())
    plan = net.write_plan()
    drops, retrans = net.qdisc_drops(), net.tcp_retransmissions()
    procs: list[Managed] = []
    reports: list[dict[str, Any]] = []
    try:
        with CpuSampler() as cpu:
            for host, node in enumerate(net.hosts):
                argv = [
                    sys.executable, "-m", "bench.bml.rank",
                    "--plan", str(plan),
                    "--host", str(host),
                    "--size", str(size),
                    "--repeat", str(repeat),
                    "--seed", str(seed),
                    "--port", str(BML_PORT_BASE + serial % 1000),
                ]  # fmt: skip
                proc = net.procs.start(node, f"bml-{serial}-{net.plan.host_name(host)}", argv)
                procs.append(proc)
                cpu.watch("hosts", proc.pid)
            # Allow ten times the link-bound time, as for the ring.
            budget = START_ALLOWANCE_S + 10 * (repeat + 1) * bml_bound_seconds(size, net.rate_mbit, cube)
            wait_all(procs, budget, f"BML on BCube({cube.n},{cube.k}), {size} bytes")
            reports = [last_json(p) for p in procs]
            expected = expected_digest(cube.hosts, size // 4, seed)
            wrong = [r["host"] for r in reports if r["digest"] != expected]
            if wrong:
                raise RunError(f"BML on BCube({cube.n},{cube.k}), {size} bytes: hosts {wrong} ended with a wrong sum")
            retrans_per = (net.tcp_retransmissions() - retrans) / (repeat + 1)
            point.reps += timed_reps(reports, repeat, retrans_per, cpu)
    finally:
        for proc in procs:
            net.procs.stop(proc)
    point.queue_drops = net.qdisc_drops() - drops
    point.load_after = load_average()
    return point
