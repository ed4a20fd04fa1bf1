"""One measured point of each system on a ``BenchNetwork``: gloo's ring, or netagg's agents through the switch.

Both are run as the user runs them: gloo through ``torch.distributed`` (``bench.network.gloo_rank``), netagg
through the ``netagg-agent`` command. Each repetition of netagg is a job of its own (join, one untimed
all-reduce, one timed); gloo runs one untimed and then every timed all-reduce in one process group (it cannot
re-form a group as cheaply). A repetition's time is its slowest rank's.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from examples.mininet.processes import Managed
from examples.mininet.switches import entry_point
from examples.mininet.topology import API_PORT

from .cpu import CpuSampler, load_average
from .model import netagg_bound_seconds
from .topology import BenchNetwork

#: Rendezvous port of gloo's store on the first host (its namespace is private; a new port per point).
GLOO_PORT_BASE = 29500
#: How often a run checks whether its processes ended.
POLL_S = 0.02
#: Agents need this much before an all-reduce starts (imports, join, the controller's job setup).
START_ALLOWANCE_S = 60.0


class RunError(RuntimeError):
    """A rank failed or the run did not finish in time; the message names the rank and quotes its log."""


@dataclass
class Rep:
    """One timed all-reduce: the slowest rank's seconds, retransmissions (all hosts, per all-reduce), CPU."""

    seconds: float
    retransmissions: float
    cpu: dict[str, float]


@dataclass
class Point:
    """All repetitions of one system at one (hosts, rate, size, loss)."""

    system: str  # "gloo", "netagg-softswitch", "netagg-bmv2"
    hosts: int
    rate_mbit: float
    size: int
    loss: float = 0.0
    lanes: int | None = None
    window: int | None = None
    reps: list[Rep] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    queue_drops: int = 0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Say = Callable[[str], None]


def wait_all(procs: list[Managed], timeout: float, what: str) -> None:
    """Wait until every process ended (deadline ``timeout``).

    The first failure stops the wait: the other ranks would wait for it until their own timeouts.
    """
    deadline = time.monotonic() + timeout
    ended: set[int] = set()
    while len(ended) < len(procs):
        now = time.monotonic()
        for proc in procs:
            if proc.pid not in ended and not proc.alive():
                ended.add(proc.pid)
                if proc.popen.returncode != 0:
                    raise RunError(
                        f"{what}: {proc.role} exited with status {proc.popen.returncode}; its log "
                        f"{proc.log_path}:\n{proc.log_tail(8)}"
                    )
        if now > deadline:
            late = [p.role for p in procs if p.pid not in ended]
            raise RunError(f"{what}: {', '.join(late)} did not finish within {timeout:.0f} s")
        time.sleep(POLL_S)


def last_json(proc: Managed) -> dict[str, Any]:
    lines = [line for line in proc.log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    if not lines:
        raise RunError(f"{proc.role} printed no JSON report; its log {proc.log_path}:\n{proc.log_tail(8)}")
    return json.loads(lines[-1])


def timed_reps(reports: list[dict[str, Any]], repeat: int, retransmissions: float, cpu: CpuSampler) -> list[Rep]:
    """One Rep per timed run of ranks that each report ``runs`` (start on time.monotonic, seconds): the slowest
    rank's time and the CPU used from the first start to the last end."""
    reps = []
    for i in range(repeat):
        runs = [r["runs"][i] for r in reports]
        start = min(r["start"] for r in runs)
        end = max(r["start"] + r["seconds"] for r in runs)
        reps.append(Rep(max(r["seconds"] for r in runs), retransmissions, cpu.cores(start, end)))
    return reps


def _stop(bn: BenchNetwork, procs: list[Managed]) -> None:
    for proc in procs:
        bn.procs.stop(proc)


def run_gloo(bn: BenchNetwork, size: int, repeat: int, serial: int, say: Say) -> Point:
    """gloo's ring all-reduce of ``size`` bytes on every host, over the Linux bridge."""
    n = len(bn.topo.hosts)
    point = Point("gloo", n, bn.rate_mbit, size, load_before=load_average())
    first = bn.topo.hosts[0]
    drops, retrans = bn.qdisc_drops(), bn.tcp_retransmissions()
    procs: list[Managed] = []
    try:
        with CpuSampler() as cpu:
            for rank, spec in enumerate(bn.topo.hosts):
                proc = bn.procs.start(
                    bn.net.hosts[spec.name],
                    f"gloo-{serial}-{spec.name}",
                    [
                        sys.executable,
                        "-m",
                        "bench.network.gloo_rank",
                        "--rank",
                        str(rank),
                        "--world-size",
                        str(n),
                        "--master",
                        f"{first.ipv4}:{GLOO_PORT_BASE + serial % 1000}",
                        "--interface",
                        spec.data_intf,
                        "--size",
                        str(size),
                        "--repeat",
                        str(repeat),
                    ],
                )
                procs.append(proc)
                cpu.watch("hosts", proc.pid)
            # Link-bound, a ring all-reduce needs 2(n-1)/n of the tensor per host on the wire; allow ten times.
            budget = START_ALLOWANCE_S + 10 * (repeat + 1) * 2 * size * 8 / (bn.rate_mbit * 1e6)
            wait_all(procs, budget, f"gloo, {n} hosts, {size} bytes")
            reports = [last_json(p) for p in procs]
            retrans_per = (bn.tcp_retransmissions() - retrans) / (repeat + 1)
            point.reps += timed_reps(reports, repeat, retrans_per, cpu)
    finally:
        _stop(bn, procs)
    point.queue_drops = bn.qdisc_drops() - drops
    point.load_after = load_average()
    return point


def netagg_agent_argv(
    bn: BenchNetwork, rank: int, job: str, size: int, lanes: int, window: int | None, deadline: float
) -> list[str]:
    spec = bn.topo.hosts[rank]
    argv = [
        entry_point("netagg-agent"),
        "--controller",
        f"{spec.mgmt_gateway}:{API_PORT}",
        "--token-file",
        str(bn.token_file),
        "--job",
        job,
        "--world-size",
        str(len(bn.topo.hosts)),
        "--rank",
        str(rank),
        "--size",
        str(size),
        "--lanes",
        str(lanes),
        "--bind",
        spec.ipv4,
        "--iterations",
        "1",
        "--deadline",
        f"{deadline:.0f}",
        "--json",
    ]
    if window is not None:
        argv += ["--window", str(window)]
    return argv


def run_netagg(
    bn: BenchNetwork, size: int, repeat: int, serial: int, say: Say, *, lanes: int, window: int | None, loss: float
) -> Point:
    """netagg's all-reduce of ``size`` bytes on every host through the target (started, with ``loss``)."""
    n = len(bn.topo.hosts)
    point = Point(
        f"netagg-{bn.target}", n, bn.rate_mbit, size, loss=loss, lanes=lanes, window=window, load_before=load_average()
    )
    drops = bn.qdisc_drops()
    switch_pid = bn.switch_pid()
    assert switch_pid is not None, "start_netagg() first"
    # An all-reduce at 1/20 of the link-bound speed (loss, a slow target) still counts; slower ones fail.
    deadline = max(30.0, 20 * netagg_bound_seconds(size, bn.rate_mbit, lanes))
    for rep in range(repeat):
        job = f"bench{serial}r{rep}"
        procs: list[Managed] = []
        try:
            with CpuSampler() as cpu:
                cpu.watch("switch", switch_pid)
                for rank, spec in enumerate(bn.topo.hosts):
                    argv = netagg_agent_argv(bn, rank, job, size, lanes, window, deadline)
                    proc = bn.procs.start(bn.net.hosts[spec.name], f"agent-{job}-{spec.name}", argv)
                    procs.append(proc)
                    cpu.watch("hosts", proc.pid)
                    cpu.watch_traffic(bn.net.hosts[spec.name].pid, spec.data_intf)
                wait_all(procs, START_ALLOWANCE_S + 2 * deadline, f"netagg job {job}")
                reports = [last_json(p) for p in procs]
                digests = {r["digest"] for r in reports}
                if len(digests) != 1:
                    raise RunError(f"netagg job {job}: the ranks' results differ ({len(digests)} digests)")
                seconds = max(r["mean_seconds"] for r in reports)
                # The timed all-reduce is the job's last traffic on the data links (leaving the job goes over
                # the management links).
                end = cpu.last_traffic()
                retrans = sum(r["retransmissions"] for r in reports) / 2  # untimed + timed
                point.reps.append(Rep(seconds, retrans, cpu.cores(end - seconds, end)))
                point.window = reports[0].get("window", window)
        finally:
            _stop(bn, procs)
        say(f"progress:   {point.system} rep {rep + 1}/{repeat}: {point.reps[-1].seconds:.3f} s")
    point.queue_drops = bn.qdisc_drops() - drops
    point.load_after = load_average()
    return point
