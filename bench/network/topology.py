"""One emulated network for both systems: n hosts on one switch node, every host link shaped in both directions.

The network is the Mininet demo's (``examples.mininet``): hosts and the switch node each in their own network
namespace, one data link and one management link per host, veth pairs created between nodes only (nothing in
the namespace the benchmark runs in), both ends of every data link shaped by the demo's token bucket filter
(tbf: same rate, burst and latency on every interface). What sits in the switch node decides the system:

- gloo: a Linux bridge over the switch node's data ports (``bridge_up``), kernel forwarding, no user space;
- netagg: the aggregating target (the softswitch on AF_PACKET sockets, or BMv2) and the controller
  (``start_netagg``), with the drop simulator's loss rate in the controller's config.

The bridge is deleted before the target starts, so the same interfaces, with the same qdiscs, carry both. Every
process is tracked by PID in the demo's ``ProcessSet``; ``close`` stops them and ends every node, which deletes
every veth pair and namespace with it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mininet.node import Host, Node

from examples.mininet.commands import check_in, run_in
from examples.mininet.network import DemoNetwork, Teardown
from examples.mininet.processes import Managed, ProcessSet, listens, wait_for
from examples.mininet.switches import TARGETS, TargetSwitch, controller_argv
from examples.mininet.topology import API_PORT, DemoTopology, controller_config, star

#: Name of the Linux bridge inside the switch node's namespace (private to that namespace).
BRIDGE = "br0"
#: How long the controller gets to push the pipeline and open its job API.
CONTROLLER_START_S = 60.0
PING_TIMEOUT_S = 5

_DROPPED = re.compile(r"dropped (\d+)")


class BenchNetworkError(RuntimeError):
    """The benchmark network could not be set up or checked; the message says which step."""


class ShapedCounters:
    """What the reports read from a shaped network: its qdisc, the shapers' drops, the hosts' TCP retransmissions.

    For a network that lists ``shaped_interfaces()`` (both ends of every shaped link) and its ``hosts``.
    """

    hosts: list[Host]

    def shaped_interfaces(self) -> list[tuple[Node, str]]:
        raise NotImplementedError

    def qdisc_shaping(self) -> str:
        """The qdisc line of the first shaped interface (the same parameters are on every end)."""
        node, intf = self.shaped_interfaces()[0]
        text = check_in(node, ["tc", "qdisc", "show", "dev", intf])
        return text.strip().splitlines()[0] if text.strip() else "none"

    def qdisc_drops(self) -> int:
        """Packets the shapers dropped so far, summed over both ends of every shaped link."""
        total = 0
        for node, intf in self.shaped_interfaces():
            text = check_in(node, ["tc", "-s", "qdisc", "show", "dev", intf])
            total += sum(int(m) for m in _DROPPED.findall(text))
        return total

    def tcp_retransmissions(self) -> int:
        """TCP segments retransmitted so far, summed over the hosts' namespaces (``/proc/PID/net/snmp``)."""
        total = 0
        for host in self.hosts:
            lines = Path(f"/proc/{host.pid}/net/snmp").read_text().splitlines()
            tcp = [line.split() for line in lines if line.startswith("Tcp:")]
            header, values = tcp[0], tcp[1]
            total += int(values[header.index("RetransSegs")])
        return total


class BenchNetwork(ShapedCounters):
    """n hosts on one switch node with every data link shaped to ``rate_mbit`` in both directions."""

    def __init__(self, hosts: int, rate_mbit: float, log_dir: Path, target: str = "softswitch") -> None:
        self.topo: DemoTopology = star(hosts)
        self.rate_mbit = rate_mbit
        self.target = target
        self.switch_cls: type[TargetSwitch] = TARGETS[target]
        self.procs = ProcessSet(log_dir)
        self.net = DemoNetwork(self.topo, self.switch_cls, self.procs, bw_mbit=rate_mbit, seed=0)
        self.controller: Managed | None = None
        self.token_file = log_dir / "controller.token"
        self._bridged = False

    # -- nodes -----------------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Host]:
        return [self.net.hosts[h.name] for h in self.topo.hosts]

    @property
    def switch(self) -> TargetSwitch:
        assert self.net.switch is not None, "build() first"
        return self.net.switch

    def build(self) -> None:
        """Create nodes and links; shape both ends of every data link (the demo's tbf)."""
        self.net.build()

    def shaped_interfaces(self) -> list[tuple[Host | TargetSwitch, str]]:
        """(node, interface) of both ends of every data link: each has the tbf qdisc."""
        ends: list[tuple[Host | TargetSwitch, str]] = []
        for spec in self.topo.hosts:
            ends.append((self.net.hosts[spec.name], spec.data_intf))
            ends.append((self.switch, self.topo.switch_intf(spec.port)))
        return ends


    # -- gloo: a Linux bridge ----------------------------------------------------------------------------------

    def bridge_up(self) -> None:
        """Put a Linux bridge over the switch node's data ports and check every host reaches the first."""
        sw = self.switch
        check_in(sw, ["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        self._bridged = True
        for spec in self.topo.hosts:
            check_in(sw, ["ip", "link", "set", self.topo.switch_intf(spec.port), "master", BRIDGE])
        check_in(sw, ["ip", "link", "set", BRIDGE, "up"])
        self.check_reachable()

    def bridge_down(self) -> None:
        """Delete the bridge (its ports stay, with their qdiscs)."""
        if self._bridged:
            check_in(self.switch, ["ip", "link", "del", BRIDGE])
            self._bridged = False

    def check_reachable(self) -> None:
        """Every host pings the first one through the switch node (one try each, with a deadline)."""
        first = self.topo.hosts[0]
        for spec in self.topo.hosts[1:]:
            done = run_in(
                self.net.hosts[spec.name],
                ["ping", "-c", "1", "-W", str(PING_TIMEOUT_S), first.ipv4],
                PING_TIMEOUT_S + 5,
            )
            if done.returncode != 0:
                raise BenchNetworkError(f"{spec.name} cannot ping {first.name} ({first.ipv4}) through the switch")

    # -- netagg: target and controller -----------------------------------------------------------------------

    def start_netagg(self, loss: float = 0.0) -> None:
        """Start the target and the controller (drop simulator at ``loss`` on every port, both directions)."""
        if self._bridged:
            raise BenchNetworkError("the bridge is up: bridge_down() before the target takes the ports")
        self.switch.start([])
        config = self.procs.log_dir / "controller.toml"
        config.write_text(controller_config(self.topo, loss))
        controller = self.procs.start(self.switch, "controller", controller_argv(config, self.token_file, API_PORT))
        self.controller = controller
        wait_for(
            "the controller to push the pipeline and open its job API",
            lambda: listens(controller.pid, API_PORT),
            CONTROLLER_START_S,
            controller,
        )

    def stop_netagg(self) -> None:
        """Stop the controller and the target by PID (the next ``start_netagg`` starts fresh ones)."""
        if self.controller is not None:
            self.procs.stop(self.controller)
            self.controller = None
        if self.switch.process is not None:
            self.procs.stop(self.switch.process)
            self.switch.process = None

    def switch_pid(self) -> int | None:
        process = self.switch.process if self.net.switch is not None else None
        return process.pid if process is not None else None

    # -- teardown ----------------------------------------------------------------------------------------------

    def node_pids(self) -> list[int]:
        """PIDs of the node shells (each holds one namespace); gone after ``close``."""
        nodes = [*self.hosts, self.switch] if self.net.switch is not None else self.hosts
        return [node.pid for node in nodes]

    def close(self) -> Teardown:
        """Stop every process by PID, delete every veth pair, end every node (and with it its namespace)."""
        return self.net.close()


def bmv2_available() -> bool:
    return shutil.which("simple_switch_grpc") is not None
