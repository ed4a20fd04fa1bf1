"""Network namespaces and veth pairs for the privileged test tiers.

``Topology`` builds one namespace for a switch and ``n`` veth pairs: the switch end of each pair lives in that
namespace, the test end stays in the namespace the test process runs in, so the test can send and receive frames
on it with ``AF_PACKET`` sockets directly. Everything it creates carries a name unique to the process and is
deleted on ``close()`` (deleting the namespace deletes the veth pairs with it).

Offloads are switched off on both ends (a user-space switch forwards frames with whatever checksum they carried,
so a kernel that defers UDP checksums to the NIC would emit bad ones), and IPv6 is disabled on every interface
created here so the kernel sends no router/neighbour solicitations that a test would then see as stray frames.

Import it as ``netns_util`` (pytest puts ``tests/`` on ``sys.path`` for the test packages under it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

#: Commands a namespace topology needs; ``missing_requirements`` names the absent ones.
REQUIRED_TOOLS = ("ip", "ethtool", "sysctl")

_COMMAND_TIMEOUT_S = 20.0


class NetnsError(RuntimeError):
    """A namespace or interface command failed."""


def missing_requirements() -> str | None:
    """Why namespace tests cannot run here (not root, a tool missing), or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, AF_PACKET sockets)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH (Debian: apt-get install iproute2 ethtool procps)"
    return None


def run(argv: list[str]) -> str:
    """Run a command with a deadline; raise NetnsError with its stderr when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(argv)!r} did not finish within {_COMMAND_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)!r} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def in_namespace(namespace: str, argv: list[str]) -> list[str]:
    """``argv`` wrapped to run inside ``namespace``."""
    return ["ip", "netns", "exec", namespace, *argv]


def _disable_offloads(iface: str, namespace: str | None) -> None:
    argv = ["ethtool", "-K", iface, "tx", "off", "tso", "off", "gso", "off", "gro", "off"]
    run(in_namespace(namespace, argv) if namespace else argv)


@dataclass
class Topology:
    """A switch namespace with ``ports`` veth pairs; switch port ``i`` (1-based) is ``switch_ifaces[i - 1]``."""

    #: Short tag that makes names unique per process and use, e.g. "cs" (at most 3 characters).
    tag: str
    ports: int
    namespace: str = field(init=False)
    test_ifaces: list[str] = field(init=False)
    switch_ifaces: list[str] = field(init=False)
    _created: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.tag) <= 3 or not self.tag.isalnum():
            raise ValueError(f"tag {self.tag!r} must be 1-3 letters or digits (interface names are 15 bytes)")
        pid = os.getpid()
        self.namespace = f"netagg-{self.tag}-{pid}"
        # Test ends share the caller's namespace with everything else on the machine: make them unique.
        self.test_ifaces = [f"na{self.tag}{pid}t{i}" for i in range(1, self.ports + 1)]
        self.switch_ifaces = [f"sw{i}" for i in range(1, self.ports + 1)]
        too_long = [name for name in self.test_ifaces if len(name) > 15]
        if too_long:
            raise ValueError(f"interface names longer than 15 bytes: {too_long}")

    def create(self) -> None:
        """Create the namespace and the veth pairs, bring them up; undo everything if a step fails."""
        run(["ip", "netns", "add", self.namespace])
        self._created = True
        try:
            # Interfaces created in the namespace afterwards inherit "default".
            run(in_namespace(self.namespace, [
                "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
            ]))
            run(in_namespace(self.namespace, ["ip", "link", "set", "lo", "up"]))
            for test_if, switch_if in zip(self.test_ifaces, self.switch_ifaces, strict=True):
                run(["ip", "link", "add", test_if, "type", "veth", "peer", "name", switch_if,
                     "netns", self.namespace])
                Path(f"/proc/sys/net/ipv6/conf/{test_if}/disable_ipv6").write_text("1\n")
                _disable_offloads(test_if, None)
                _disable_offloads(switch_if, self.namespace)
                run(in_namespace(self.namespace, ["ip", "link", "set", switch_if, "up"]))
                run(["ip", "link", "set", test_if, "up"])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Delete the namespace (and with it every veth pair); safe to call twice."""
        if not self._created:
            return
        self._created = False
        # Deleting the switch-side ends removes their peers; the namespace goes with its last process.
        for switch_if in self.switch_ifaces:
            subprocess.run(in_namespace(self.namespace, ["ip", "link", "del", switch_if]),
                           capture_output=True, timeout=_COMMAND_TIMEOUT_S, check=False)
        run(["ip", "netns", "del", self.namespace])

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
