"""Build the demo's Mininet network from a ``DemoTopology`` and take it down again, completely.

Nodes are Mininet ``Host``s and one ``TargetSwitch``, all in their own network namespaces; every veth pair is
created between two of them, so nothing appears in the namespace the demo runs in and no name can collide with
anything else on the machine. Mininet's ``Mininet`` class, ``mn`` and its cleanup are not used: they change
machine-wide settings and kill processes by name. Teardown stops exactly the processes the demo started (by
PID), deletes exactly the interfaces it created and ends exactly the node shells it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field

from mininet.link import Link
from mininet.node import Host, Node

from .commands import COMMAND_TIMEOUT_S, check_in
from .processes import ProcessSet
from .signals import deferred_interrupts
from .switches import TargetSwitch
from .topology import DemoTopology

_SHELL_EXIT_S = 5.0


@dataclass
class DemoNetwork:
    """The running network: nodes by name, links, and the switch."""

    topo: DemoTopology
    switch_cls: type[TargetSwitch]
    procs: ProcessSet
    bw_mbit: float | None = None
    seed: int | None = None
    hosts: dict[str, Host] = field(default_factory=dict)
    switch: TargetSwitch | None = None
    #: (node, interface) for one end of every veth pair created; deleting it deletes the pair.
    _veths: list[tuple[Node, str]] = field(default_factory=list)
    _nodes: list[Node] = field(default_factory=list)

    def build(self) -> None:
        """Create the nodes and links and configure addresses, offloads and shaping (not the target yet)."""
        topo = self.topo
        with deferred_interrupts():
            self.switch = self.switch_cls(
                topo.switch_name, procs=self.procs, device_id=topo.device_id, seed=self.seed
            )
            self._nodes.append(self.switch)
        self._quiet_namespace(self.switch)
        for index, spec in enumerate(topo.hosts):
            with deferred_interrupts():
                host = Host(spec.name, inNamespace=True)
                self._nodes.append(host)
            self.hosts[spec.name] = host
            self._quiet_namespace(host)
            with deferred_interrupts():
                Link(
                    host,
                    self.switch,
                    port1=0,
                    port2=spec.port,
                    intfName1=spec.data_intf,
                    intfName2=topo.switch_intf(spec.port),
                    addr1=spec.mac,
                    addr2=_switch_port_mac(spec.port),
                    params1={"ip": f"{spec.ipv4}/{topo.prefix_len}"},
                )
                self._veths.append((host, spec.data_intf))
            with deferred_interrupts():
                # Management ports are numbered far above the data ports; only Mininet's bookkeeping
                # sees them.
                Link(
                    host,
                    self.switch,
                    port1=1,
                    port2=1000 + index,
                    intfName1=spec.mgmt_intf,
                    intfName2=topo.switch_mgmt_intf(index),
                    params1={"ip": f"{spec.mgmt_ipv4}/{topo.mgmt_prefix_len}"},
                    params2={"ip": f"{spec.mgmt_gateway}/{topo.mgmt_prefix_len}"},
                )
                self._veths.append((host, spec.mgmt_intf))
            # Frames cross a user-space switch: the sender must fill in its UDP checksums itself.
            check_in(host, ["ethtool", "-K", spec.data_intf, "tx", "off", "tso", "off", "gso", "off"])
            if self.bw_mbit:
                self._shape(host, spec.data_intf)
                self._shape(self.switch, topo.switch_intf(spec.port))

    def start_switch(self) -> None:
        assert self.switch is not None, "build() first"
        self.switch.start([])

    def _quiet_namespace(self, node: Node) -> None:
        quiet_namespace(node)

    def _shape(self, node: Node, intf: str) -> None:
        assert self.bw_mbit
        shape(node, intf, self.bw_mbit)

    def close(self) -> Teardown:
        """Stop processes, delete interfaces, end node shells; say what was done and what went wrong."""
        return teardown(self.procs, self._veths, self._nodes)


def quiet_namespace(node: Node) -> None:
    """No IPv6 in ``node``'s namespace (no router/neighbour solicitations to flood); loopback up for servers."""
    check_in(
        node,
        [
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    check_in(node, ["ip", "link", "set", "lo", "up"])


def shape(node: Node, intf: str, bw_mbit: float) -> None:
    """Limit ``intf``'s egress to ``bw_mbit`` with a token bucket (tbf: netem is not in every kernel)."""
    rate_bytes = bw_mbit * 1e6 / 8
    # The bucket must hold at least one timer tick's worth of bytes, and a few full frames.
    burst = max(16 * 1514, int(rate_bytes / 250))
    check_in(
        node,
        [
            "tc",
            "qdisc",
            "replace",
            "dev",
            intf,
            "root",
            "tbf",
            "rate",
            f"{bw_mbit}mbit",
            "burst",
            str(burst),
            "latency",
            "50ms",
        ],
    )


def teardown(procs: ProcessSet, veths: list[tuple[Node, str]], nodes: list[Node]) -> Teardown:
    """Stop every process of ``procs`` by PID, delete ``veths`` (one end of each pair), end ``nodes``' shells.

    The lists are emptied; the result says what was done and what went wrong.
    """
    done = Teardown(processes=len(procs.processes), veths=len(veths), shells=len(nodes))
    done.problems += [f"{p.role} (pid {p.pid}) survived SIGKILL" for p in procs.stop_all()]
    for node, intf in reversed(veths):
        done.problems += _delete_intf(node, intf)
    veths.clear()
    for node in reversed(nodes):
        done.problems += _end_shell(node)
    nodes.clear()
    return done


@dataclass
class Teardown:
    """What ``DemoNetwork.close`` took down, and the problems it met (empty when everything went)."""

    processes: int
    veths: int
    shells: int
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"stopped {self.processes} processes, deleted {self.veths} veth pairs, ended {self.shells} node "
            "shells (and with them their network namespaces)"
        )


def _switch_port_mac(port: int) -> str:
    """A locally administered MAC for the switch's end of a data link (Mininet sets both ends or neither)."""
    return f"02:00:00:fe:{port >> 8:02x}:{port & 0xFF:02x}"


def _delete_intf(node: Node, intf: str) -> list[str]:
    """Delete one end of a veth pair (its peer goes with it) in ``node``'s namespace, without its shell."""
    if node.shell is None or node.shell.poll() is not None:
        return []  # the shell, and with it the namespace and the pair, is already gone
    try:
        done = subprocess.run(
            ["mnexec", "-a", str(node.pid), "ip", "link", "del", intf],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [f"deleting {intf} in {node.name} timed out"]
    if done.returncode != 0 and "Cannot find device" not in done.stderr:
        return [f"deleting {intf} in {node.name}: {done.stderr.strip()}"]
    return []


def _end_shell(node: Node) -> list[str]:
    """End a node's shell by PID (SIGHUP to its process group, then SIGKILL) and close its pty."""
    shell = node.shell
    if shell is None:
        return []
    problems: list[str] = []
    for sig in (signal.SIGHUP, signal.SIGKILL):
        if shell.poll() is not None:
            break
        try:
            os.killpg(shell.pid, sig)
        except ProcessLookupError:
            break
        try:
            shell.wait(_SHELL_EXIT_S)
        except subprocess.TimeoutExpired:
            continue
    if shell.poll() is None:
        problems.append(f"shell of {node.name} (pid {shell.pid}) did not exit")
    # Node.cleanup() would wait for the shell without a deadline; close the pty ourselves.
    for close in (node.stdin.close, lambda: os.close(node.slave)):
        try:
            close()
        except OSError:
            pass
    node.shell = None
    return problems
