"""BCube(n, k) in network namespaces, built and taken down as ``bench.network`` builds its star.

Every host is a Mininet ``Host`` in its own namespace with ``k`` data interfaces ``hH-eth<l>``, one per level. Every
level-``l`` group (the ``n`` hosts that differ only in digit ``l``) has a switch node of its own, a namespace
holding one Linux bridge over the group's ``n`` ports. Both ends of every link are shaped with the demo's tbf
(``examples.mininet.network.shape``), with the same parameters as the benchmark star, and the host ends have the
same offloads off. Each group is its own /24 (``10.<100 + l>.<group>.<digit + 1>``), so a host's level-``l``
address routes out of its level-``l`` card only.

Teardown is the demo's (``examples.mininet.network.teardown``): processes stopped by PID, every veth pair deleted,
every node shell ended, and with it its namespace and bridge; node creation holds Ctrl-C until it is recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mininet.link import Link
from mininet.node import Host, Node

from examples.mininet.commands import check_in, run_in
from examples.mininet.network import Teardown, quiet_namespace, shape, teardown
from examples.mininet.processes import ProcessSet
from examples.mininet.signals import deferred_interrupts
from netagg.host_agent.bml import BCube
from netagg.host_agent.bml_transport import BmlPlan

from ..network.topology import BRIDGE, PING_TIMEOUT_S, BenchNetworkError, ShapedCounters

_ADDR = re.compile(r"^\d+:\s+(\S+)\s+inet\s+(\d+\.\d+\.\d+\.\d+)/\d+")


@dataclass(frozen=True)
class Card:
    """One host's level-``level`` network card: its interface and address."""

    host: int
    level: int
    interface: str
    address: str


@dataclass(frozen=True)
class AddressPlan:
    """Names and addresses of every host, card and switch node of a BCube(n, k); pure data, no namespaces."""

    cube: BCube

    def __post_init__(self) -> None:
        if self.cube.n ** (self.cube.k - 1) > 254:
            raise BenchNetworkError(
                f"BCube(n={self.cube.n}, k={self.cube.k}): more than 254 groups per level do not fit the address plan"
            )

    def host_name(self, host: int) -> str:
        return f"h{host + 1}"

    def group(self, host: int, level: int) -> int:
        """Index of ``host``'s level-``level`` group among that level's ``n**(k-1)`` groups (digit ``level`` cut)."""
        n = self.cube.n
        return (host // n ** (level + 1)) * n**level + host % n**level

    def card(self, host: int, level: int) -> Card:
        digit = self.cube.digit(host, level)
        address = f"10.{100 + level}.{self.group(host, level)}.{digit + 1}"
        return Card(host, level, f"{self.host_name(host)}-eth{level}", address)

    def cards(self, host: int) -> list[Card]:
        return [self.card(host, level) for level in range(self.cube.k)]

    def switch_name(self, level: int, group: int) -> str:
        return f"s{level}g{group}"

    def switch_port(self, level: int, group: int, digit: int) -> str:
        return f"{self.switch_name(level, group)}-p{digit}"

    def addresses(self) -> list[list[str]]:
        """``[host][level]`` -> card address: what every host's BML transport is given."""
        return [[c.address for c in self.cards(h)] for h in range(self.cube.hosts)]

    def bml_plan(self) -> BmlPlan:
        """The plan every host's BML transport is given (its JSON is the plan file)."""
        return BmlPlan(
            self.cube,
            tuple(tuple(c.address for c in self.cards(h)) for h in range(self.cube.hosts)),
            tuple(tuple(c.interface for c in self.cards(h)) for h in range(self.cube.hosts)),
        )

    def to_json(self) -> str:
        return self.bml_plan().to_json()

    def missing_cards(self, host: int, ip_addr_output: str) -> list[str]:
        """What ``host`` lacks of its cards, from ``ip -o -4 addr show`` run in its namespace (empty: nothing)."""
        present = {m.group(1): m.group(2) for m in map(_ADDR.match, ip_addr_output.splitlines()) if m}
        problems = []
        for c in self.cards(host):
            if c.interface not in present:
                problems.append(f"{self.host_name(host)}: no interface {c.interface} (its level-{c.level} card)")
            elif present[c.interface] != c.address:
                problems.append(
                    f"{self.host_name(host)}: {c.interface} has {present[c.interface]}, not {c.address} "
                    f"(its level-{c.level} card)"
                )
        return problems


def bcube_for(hosts: int, cards: int) -> BCube:
    """The BCube with ``hosts`` hosts of ``cards`` cards each; BenchNetworkError naming the sizes that exist."""
    try:
        return BCube.for_hosts(hosts, cards)
    except ValueError as exc:
        raise BenchNetworkError(str(exc)) from None


class BCubeNetwork(ShapedCounters):
    """BCube(n, k) hosts and level switches in namespaces, every link shaped to ``rate_mbit`` both ways."""

    def __init__(self, cube: BCube, rate_mbit: float, log_dir: Path) -> None:
        self.cube = cube
        self.plan = AddressPlan(cube)
        self.rate_mbit = rate_mbit
        self.procs = ProcessSet(log_dir)
        self.hosts: list[Host] = []
        self.switches: dict[tuple[int, int], Node] = {}
        self._veths: list[tuple[Node, str]] = []
        self._nodes: list[Node] = []

    @property
    def log_dir(self) -> Path:
        return self.procs.log_dir

    def build(self) -> None:
        """Create hosts, level switches (a bridge each) and links; shape both ends; check every card."""
        cube, plan = self.cube, self.plan
        for level in range(cube.k):
            for group in range(cube.n ** (cube.k - 1)):
                with deferred_interrupts():
                    node = Node(plan.switch_name(level, group), inNamespace=True)
                    self._nodes.append(node)
                self.switches[(level, group)] = node
                quiet_namespace(node)
        for host in range(cube.hosts):
            with deferred_interrupts():
                node = Host(plan.host_name(host), inNamespace=True)
                self._nodes.append(node)
            self.hosts.append(node)
            quiet_namespace(node)
            for card in plan.cards(host):
                group, digit = plan.group(host, card.level), cube.digit(host, card.level)
                switch = self.switches[(card.level, group)]
                port = plan.switch_port(card.level, group, digit)
                with deferred_interrupts():
                    Link(
                        node,
                        switch,
                        port1=card.level,
                        port2=digit,
                        intfName1=card.interface,
                        intfName2=port,
                        params1={"ip": f"{card.address}/24"},
                    )
                    self._veths.append((node, card.interface))
                # The same host-side offloads as the benchmark star's hosts (its ring baseline runs there).
                check_in(node, ["ethtool", "-K", card.interface, "tx", "off", "tso", "off", "gso", "off"])
                shape(node, card.interface, self.rate_mbit)
                shape(switch, port, self.rate_mbit)
        for (level, group), switch in self.switches.items():
            check_in(switch, ["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
            for digit in range(cube.n):
                check_in(switch, ["ip", "link", "set", plan.switch_port(level, group, digit), "master", BRIDGE])
            check_in(switch, ["ip", "link", "set", BRIDGE, "up"])
        self.check()

    def check(self) -> None:
        """Every host has its ``k`` cards with their addresses, and reaches a peer of each of its groups."""
        problems: list[str] = []
        for host, node in enumerate(self.hosts):
            problems += self.plan.missing_cards(host, check_in(node, ["ip", "-o", "-4", "addr", "show"]))
        if problems:
            raise BenchNetworkError("not a BCube: " + "; ".join(problems))
        for host, node in enumerate(self.hosts):
            for level in range(self.cube.k):
                peer = self.cube.with_digit(host, level, (self.cube.digit(host, level) + 1) % self.cube.n)
                target = self.plan.card(peer, level).address
                done = run_in(node, ["ping", "-c", "1", "-W", str(PING_TIMEOUT_S), target], PING_TIMEOUT_S + 5)
                if done.returncode != 0:
                    raise BenchNetworkError(
                        f"{self.plan.host_name(host)} cannot ping {self.plan.host_name(peer)} ({target}) through "
                        f"its level-{level} switch"
                    )

    def shaped_interfaces(self) -> list[tuple[Node, str]]:
        """(node, interface) of both ends of every link: each has the tbf qdisc."""
        ends: list[tuple[Node, str]] = []
        for host, node in enumerate(self.hosts):
            for card in self.plan.cards(host):
                group = self.plan.group(host, card.level)
                ends.append((node, card.interface))
                ends.append(
                    (
                        self.switches[(card.level, group)],
                        self.plan.switch_port(card.level, group, self.cube.digit(host, card.level)),
                    )
                )
        return ends

    def write_plan(self) -> Path:
        """The address plan as JSON in the log folder, for the hosts' processes."""
        path = self.log_dir / f"bcube-{self.cube.n}-{self.cube.k}.json"
        path.write_text(self.plan.to_json())
        return path

    def node_pids(self) -> list[int]:
        """PIDs of the node shells (each holds one namespace); gone after ``close``."""
        return [node.pid for node in self._nodes]

    def close(self) -> Teardown:
        """Stop every process by PID, delete every veth pair, end every node (and with it its namespace)."""
        self.hosts, self.switches = [], {}
        return teardown(self.procs, self._veths, self._nodes)
