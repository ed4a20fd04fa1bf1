"""The demo's network as data: one switch, N hosts on its ports, addresses for data and management.

Every host has two links to the switch node. The data link (``hN-eth0`` <-> ``s1-ethP``) is a switch port: the
target forwards and aggregates its frames. The management link (``hN-mgmt`` <-> ``s1-mN``) is an ordinary
point-to-point IPv4 link into the switch node's namespace, where the controller's job API listens, so the
agents reach the controller without going through the switch under test.

A topology is built by ``star(n)`` or read from a TOML file (``load``); docs/demo.md shows the format.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Port of the P4Runtime server inside the switch node's namespace (simple_switch_grpc's usual one).
GRPC_PORT = 9559
#: Port of the controller's job API inside the switch node's namespace.
API_PORT = 9590
#: Switch ports and host names are numbered from 1 (Mininet's convention; port 0 is no port for BMv2).
FIRST_PORT = 1
#: Mininet interface names live inside the nodes' own namespaces, so these short names cannot collide with
#: anything else on the machine.
SWITCH_NAME = "s1"


class TopologyError(ValueError):
    """The topology data is inconsistent (duplicate address, bad port, ...)."""


@dataclass(frozen=True)
class HostSpec:
    """One host: its data address and switch port, and its management link."""

    name: str
    mac: str
    ipv4: str
    port: int
    #: Host end of the management link and the switch node's end (the controller's address for this host).
    mgmt_ipv4: str
    mgmt_gateway: str

    @property
    def data_intf(self) -> str:
        return f"{self.name}-eth0"

    @property
    def mgmt_intf(self) -> str:
        return f"{self.name}-mgmt"


@dataclass(frozen=True)
class DemoTopology:
    """The switch (aggregation MAC/IPv4, P4Runtime device id) and its hosts."""

    hosts: tuple[HostSpec, ...]
    agg_mac: str = "02:00:00:00:ff:01"
    agg_ipv4: str = "10.0.0.254"
    prefix_len: int = 24
    mgmt_prefix_len: int = 30
    device_id: int = 1
    switch_name: str = SWITCH_NAME
    ports: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(h.port for h in self.hosts))
        if not self.hosts:
            raise TopologyError("a topology needs at least one host")
        _distinct([h.name for h in self.hosts], "host name")
        _distinct([h.mac.lower() for h in self.hosts] + [self.agg_mac.lower()], "MAC address")
        _distinct([h.ipv4 for h in self.hosts] + [self.agg_ipv4], "data IPv4 address")
        _distinct([h.mgmt_ipv4 for h in self.hosts] + [h.mgmt_gateway for h in self.hosts], "management IPv4")
        _distinct(list(self.ports), "switch port")
        data_net = ipaddress.IPv4Network(f"{self.agg_ipv4}/{self.prefix_len}", strict=False)
        for h in self.hosts:
            if not 1 <= h.port < 511:  # 511 is BMv2's drop port on v1model
                raise TopologyError(f"{h.name}: switch port {h.port} is not in 1..510")
            if ipaddress.IPv4Address(h.ipv4) not in data_net:
                raise TopologyError(f"{h.name}: {h.ipv4} is not in the data network {data_net}")
            mgmt_net = ipaddress.IPv4Network(f"{h.mgmt_gateway}/{self.mgmt_prefix_len}", strict=False)
            if ipaddress.IPv4Address(h.mgmt_ipv4) not in mgmt_net:
                raise TopologyError(
                    f"{h.name}: {h.mgmt_ipv4} and {h.mgmt_gateway} are not on one /{self.mgmt_prefix_len}"
                )
            if len(h.mgmt_intf) > 15:
                raise TopologyError(
                    f"{h.name}: host names longer than 10 characters make interface names "
                    "longer than Linux allows"
                )

    def switch_intf(self, port: int) -> str:
        """Name of the switch node's interface for data port ``port``."""
        return f"{self.switch_name}-eth{port}"

    def switch_mgmt_intf(self, index: int) -> str:
        """Name of the switch node's end of host ``index``'s (0-based) management link."""
        return f"{self.switch_name}-m{index + 1}"


def star(n_hosts: int) -> DemoTopology:
    """``n_hosts`` hosts h1..hN on ports 1..N: data 10.0.0.i/24, management 10.255.i.2/30 (switch side .1)."""
    if not 1 <= n_hosts <= 32:
        raise TopologyError(
            f"--hosts {n_hosts}: the demo supports 1..32 hosts (a job has at most 32 workers)"
        )
    hosts = tuple(
        HostSpec(
            name=f"h{i}",
            mac=f"02:00:00:00:00:{i:02x}",
            ipv4=f"10.0.0.{i}",
            port=FIRST_PORT + i - 1,
            mgmt_ipv4=f"10.255.{i}.2",
            mgmt_gateway=f"10.255.{i}.1",
        )
        for i in range(1, n_hosts + 1)
    )
    return DemoTopology(hosts=hosts)


def load(path: Path) -> DemoTopology:
    """Read a topology from TOML: a ``[switch]`` table (optional) and one ``[[hosts]]`` table per host."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TopologyError(f"cannot read topology {path}: {exc}") from None
    switch = data.get("switch", {})
    hosts = data.get("hosts", [])
    if not isinstance(switch, dict) or not isinstance(hosts, list):
        raise TopologyError(f"{path}: expected a [switch] table and [[hosts]] tables")
    try:
        specs = tuple(HostSpec(**_pick(h, HostSpec)) for h in hosts)
        return DemoTopology(hosts=specs, **_pick(switch, DemoTopology))
    except TypeError as exc:
        raise TopologyError(f"{path}: {exc}") from None


def _pick(table: Any, cls: type) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise TopologyError(f"expected a table for {cls.__name__}, got {table!r}")
    known = {f for f in cls.__dataclass_fields__ if f not in ("hosts", "ports")}
    unknown = set(table) - known
    if unknown:
        raise TopologyError(f"unknown keys for {cls.__name__}: {sorted(unknown)} (known: {sorted(known)})")
    return dict(table)


def _distinct(values: list[Any], what: str) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise TopologyError(f"duplicate {what}: {value}")
        seen.add(value)


def controller_config(topo: DemoTopology, loss: float) -> str:
    """The controller's TOML config for ``topo``: switch on 127.0.0.1 of its namespace, ``loss`` on all."""
    lines = [
        "# Generated by the Mininet demo.",
        "[switch]",
        f'address = "127.0.0.1:{GRPC_PORT}"',
        f"device_id = {topo.device_id}",
        f'mac = "{topo.agg_mac}"',
        f'addr = "{topo.agg_ipv4}"',
        f"ports = [{', '.join(str(p) for p in topo.ports)}]",
    ]
    for h in topo.hosts:
        lines += [
            "",
            "[[hosts]]",
            f'name = "{h.name}"',
            f'mac = "{h.mac}"',
            f'addr = "{h.ipv4}"',
            f"port = {h.port}",
        ]
    if loss > 0:
        # Loss on the way in and on the way out of every port: UPDATEs and RESULTs both get lost.
        for p in topo.ports:
            lines += ["", "[[loss]]", f"port = {p}", f"ingress = {loss!r}", f"egress = {loss!r}"]
    return "\n".join(lines) + "\n"
