"""The topology/config file (TOML): the switch, its ports, the hosts, loss settings, pool, lease and credentials.

The format is documented in docs/controller.md; ``controller/examples/`` holds examples.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from netagg.constants import AGG_UDP_PORT, POOL_SLOTS, PORT_BITS

from .errors import ConfigError

ZERO_MAC = "00:00:00:00:00:00"
#: In UDP mode every worker talks to the software switch over loopback, as if from this port.
UDP_MODE_ADDR = "127.0.0.1"
UDP_MODE_PORT = 1
DEFAULT_DEFAULT_SLOTS = 64
DEFAULT_LEASE_SECONDS = 30.0

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def loss_threshold(probability: float) -> int:
    """Drop-simulator threshold for a loss probability: drop when random32 < threshold."""
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"loss probability {probability} is not in [0, 1]")
    return min(round(probability * 2**32), 2**32 - 1)


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    mac: str
    addr: str
    port: int  # the switch port the host is attached to


@dataclass(frozen=True, slots=True)
class PortLoss:
    port: int
    ingress: float = 0.0
    egress: float = 0.0


@dataclass(frozen=True)
class Topology:
    """Everything the controller needs to know about the switch and its hosts."""

    address: str  # P4Runtime gRPC target host:port
    device_id: int
    election_id: int
    mac: str  # the switch's aggregation MAC
    addr: str  # the switch's aggregation IPv4
    ports: tuple[int, ...]
    hosts: tuple[Host, ...]
    loss: tuple[PortLoss, ...] = ()
    udp_mode: bool = False
    #: UDP port workers send UPDATEs to (48864, or the software switch's socket in UDP mode).
    agg_port: int = AGG_UDP_PORT
    pool_slots: int = POOL_SLOTS
    default_slots: int = DEFAULT_DEFAULT_SLOTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: The job API's token file (created at start when missing); None: ``auth.default_token_file()``.
    token_file: Path | None = None
    #: Token files of further tenants (each must exist); each tenant's jobs are its own.
    tenant_token_files: tuple[Path, ...] = ()
    #: P4Runtime over TLS: the CA that signed the switch's certificate, and this controller's client certificate
    #: and key (for a switch that requires client certificates). None: plain TCP.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hosts_by_addr: dict[str, Host] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts_by_addr", {h.addr: h for h in self.hosts})


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as ex:
        raise ConfigError(f"cannot read config {path}: {ex.strerror}") from None
    except tomllib.TOMLDecodeError as ex:
        raise ConfigError(f"config {path} is not valid TOML: {ex}") from None
    except UnicodeDecodeError as ex:  # tomllib decodes the whole file first; this is not a TOMLDecodeError
        raise ConfigError(f"config {path} is not UTF-8 text (byte {ex.start} cannot be decoded)") from None
    try:
        topology = parse_topology(data)
    except ConfigError as ex:
        raise ConfigError(f"config {path}: {ex}") from None
    # Files named in the config are relative to the config file's folder.
    base = path.parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else base / p.expanduser()

    return replace(
        topology,
        token_file=resolve(topology.token_file),
        tenant_token_files=tuple(base / p.expanduser() for p in topology.tenant_token_files),
        tls_ca=resolve(topology.tls_ca),
        tls_cert=resolve(topology.tls_cert),
        tls_key=resolve(topology.tls_key),
    )


def parse_topology(data: Mapping[str, Any]) -> Topology:
    """Validate the parsed TOML document."""
    _known(data, "top level", {"switch", "hosts", "loss", "pool", "jobs", "api"})
    sw = _table(data, "switch", required=True)
    _known(sw, "[switch]", {"address", "device_id", "election_id", "mac", "addr", "ports", "udp_mode", "agg_port",
                            "tls_ca", "tls_cert", "tls_key"})
    tls_ca, tls_cert, tls_key = (_path(sw, "[switch]", key) for key in ("tls_ca", "tls_cert", "tls_key"))
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("[switch] tls_cert and tls_key go together (the client certificate and its key)")
    if tls_cert is not None and tls_ca is None:
        raise ConfigError("[switch] tls_cert needs tls_ca (the CA that signed the switch's certificate)")
    udp_mode = _get(sw, "[switch]", "udp_mode", bool, False)
    address = _get(sw, "[switch]", "address", str)
    device_id = _get(sw, "[switch]", "device_id", int, 1)
    election_id = _get(sw, "[switch]", "election_id", int, 10)
    if device_id < 0 or election_id < 1:
        raise ConfigError("[switch] device_id must be >= 0 and election_id >= 1")
    if udp_mode:
        mac = _mac(_get(sw, "[switch]", "mac", str, ZERO_MAC), "[switch] mac")
        addr = _ipv4(_get(sw, "[switch]", "addr", str, UDP_MODE_ADDR), "[switch] addr")
        ports = tuple(_get(sw, "[switch]", "ports", list, [UDP_MODE_PORT]))
        agg_port = _get(sw, "[switch]", "agg_port", int)
    else:
        mac = _mac(_get(sw, "[switch]", "mac", str), "[switch] mac")
        addr = _ipv4(_get(sw, "[switch]", "addr", str), "[switch] addr")
        ports = tuple(_get(sw, "[switch]", "ports", list))
        agg_port = _get(sw, "[switch]", "agg_port", int, AGG_UDP_PORT)
    if not 1 <= agg_port <= 0xFFFF:
        raise ConfigError(f"[switch] agg_port {agg_port} is not a UDP port")
    for p in ports:
        _switch_port(p, "[switch] ports")
    if not ports or len(set(ports)) != len(ports):
        raise ConfigError(f"[switch] ports must be a non-empty list of distinct ports, not {list(ports)}")
    if udp_mode and ports != (UDP_MODE_PORT,):
        raise ConfigError(f"[switch] udp_mode: ports must be [{UDP_MODE_PORT}]")

    hosts = []
    default_hosts = [{"name": "localhost", "addr": UDP_MODE_ADDR, "port": UDP_MODE_PORT}] if udp_mode else []
    raw_hosts = data.get("hosts", default_hosts)
    if not isinstance(raw_hosts, list):
        raise ConfigError("hosts must be an array of tables ([[hosts]])")
    for i, h in enumerate(raw_hosts):
        where = f"[[hosts]] #{i + 1}"
        if not isinstance(h, dict):
            raise ConfigError(f"{where} is not a table")
        _known(h, where, {"name", "mac", "addr", "port"})
        name = _get(h, where, "name", str)
        host_addr = _ipv4(_get(h, where, "addr", str), f"{where} addr")
        host_port = _switch_port(_get(h, where, "port", int), f"{where} port")
        if udp_mode:
            host_mac = _mac(_get(h, where, "mac", str, ZERO_MAC), f"{where} mac")
            if host_addr != UDP_MODE_ADDR or host_port != UDP_MODE_PORT:
                raise ConfigError(
                    f"{where} ({name}): in udp_mode every host is {UDP_MODE_ADDR} at port {UDP_MODE_PORT}"
                )
        else:
            host_mac = _mac(_get(h, where, "mac", str), f"{where} mac")
        if host_port not in ports:
            raise ConfigError(f"{where} ({name}): port {host_port} is not one of the switch ports {list(ports)}")
        hosts.append(Host(name, host_mac, host_addr, host_port))
    _distinct([h.name for h in hosts], "host name")
    _distinct([h.addr for h in hosts], "host addr")
    if not udp_mode:
        _distinct([h.mac for h in hosts], "host mac")

    loss = []
    raw_loss = data.get("loss", [])
    if not isinstance(raw_loss, list):
        raise ConfigError("loss must be an array of tables ([[loss]])")
    for i, entry in enumerate(raw_loss):
        where = f"[[loss]] #{i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not a table")
        _known(entry, where, {"port", "ingress", "egress"})
        port = _switch_port(_get(entry, where, "port", int), f"{where} port")
        if port not in ports:
            raise ConfigError(f"{where}: port {port} is not one of the switch ports {list(ports)}")
        ingress = float(_get(entry, where, "ingress", (int, float), 0.0))
        egress = float(_get(entry, where, "egress", (int, float), 0.0))
        loss_threshold(ingress), loss_threshold(egress)  # validate now, not at install time
        loss.append(PortLoss(port, ingress, egress))
    _distinct([entry.port for entry in loss], "[[loss]] port")

    pool = _table(data, "pool")
    _known(pool, "[pool]", {"slots", "default_job_slots"})
    pool_slots = _get(pool, "[pool]", "slots", int, POOL_SLOTS)
    if not 1 <= pool_slots <= POOL_SLOTS:
        raise ConfigError(f"[pool] slots {pool_slots} must be 1..{POOL_SLOTS} (the switch's pool)")
    default_slots = _get(pool, "[pool]", "default_job_slots", int, min(DEFAULT_DEFAULT_SLOTS, pool_slots))
    if not 1 <= default_slots <= pool_slots:
        raise ConfigError(f"[pool] default_job_slots {default_slots} must be 1..{pool_slots}")

    jobs = _table(data, "jobs")
    _known(jobs, "[jobs]", {"lease_seconds"})
    lease = float(_get(jobs, "[jobs]", "lease_seconds", (int, float), DEFAULT_LEASE_SECONDS))
    if not math.isfinite(lease) or lease <= 0:  # TOML has nan and inf; a NaN lease would never expire a job
        raise ConfigError(f"[jobs] lease_seconds = {lease} must be a finite number of seconds > 0")

    api = _table(data, "api")
    _known(api, "[api]", {"token_file", "tenant_token_files"})
    token_file = _path(api, "[api]", "token_file")
    tenant_files = _get(api, "[api]", "tenant_token_files", list, [])
    for f in tenant_files:
        if not isinstance(f, str) or not f:
            raise ConfigError(f"[api] tenant_token_files: {f!r} is not a file name")

    return Topology(
        address=address,
        device_id=device_id,
        election_id=election_id,
        mac=mac,
        addr=addr,
        ports=ports,
        hosts=tuple(hosts),
        loss=tuple(loss),
        udp_mode=udp_mode,
        agg_port=agg_port,
        pool_slots=pool_slots,
        default_slots=default_slots,
        lease_seconds=lease,
        token_file=token_file,
        tenant_token_files=tuple(Path(f) for f in tenant_files),
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


_MISSING = object()


def _get(table: Mapping[str, Any], where: str, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    value = table.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ConfigError(f"{where}: '{key}' is required")
        return default
    # bool is an int subclass; a port given as `true` is a mistake, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: '{key}' = {value!r} has the wrong type")
    return value


def _path(table: Mapping[str, Any], where: str, key: str) -> Path | None:
    value = _get(table, where, key, str, None)
    if value is None:
        return None
    if not value:
        raise ConfigError(f"{where}: '{key}' must name a file")
    return Path(value)


def _table(data: Mapping[str, Any], key: str, required: bool = False) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"[{key}] table is required")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' must be a table ([{key}])")
    return value


def _known(table: Mapping[str, Any], where: str, keys: set[str]) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(keys))})")


def _mac(value: str, where: str) -> str:
    mac = value.lower()
    if not _MAC_RE.match(mac):
        raise ConfigError(f"{where}: {value!r} is not a MAC address like 02:00:00:00:00:01")
    return mac


def _ipv4(value: str, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address") from None


def _switch_port(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << PORT_BITS):
        raise ConfigError(f"{where}: {value!r} is not a switch port (0..{(1 << PORT_BITS) - 1})")
    return value


def _distinct(values: list[Any], what: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"duplicate {what} {v!r}")
        seen.add(v)
