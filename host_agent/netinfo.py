"""Which MAC address the switch should send RESULTs to, found from the local IPv4 address the agent binds."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
_ZERO_MAC = "00:00:00:00:00:00"


def interface_for_address(addr: str) -> str | None:
    """Name of the local interface holding IPv4 ``addr``, or None."""
    wanted = ipaddress.IPv4Address(addr).packed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # interface without an IPv4 address
            if answer[20:24] == wanted:
                return name
    return None


def mac_for_address(addr: str) -> str:
    """MAC of the interface holding ``addr`` (all zeros for loopback or when not found: UDP mode ignores it)."""
    if addr in ("0.0.0.0", ""):
        return _ZERO_MAC
    name = interface_for_address(addr)
    if name is None:
        return _ZERO_MAC
    try:
        return Path(f"/sys/class/net/{name}/address").read_text().strip() or _ZERO_MAC
    except OSError:
        return _ZERO_MAC
