"""Mininet switches whose datapath is a netagg target process: BMv2 (simple_switch_grpc) or the softswitch.

Each switch node lives in its own network namespace (``inNamespace=True``): BMv2's Thrift server binds
0.0.0.0:9090 and both targets serve P4Runtime on 127.0.0.1:``GRPC_PORT``, which must not meet anything else on
the machine. The target process is started in that namespace, tracked by PID in the demo's ``ProcessSet`` and
stopped by PID. The switch's ports are its Mininet veth ends, ``PORT@s1-ethPORT``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from mininet.node import Switch

from .commands import check_in
from .processes import Managed, ProcessError, ProcessSet, listens, wait_for
from .topology import GRPC_PORT

#: How long a target gets to open its P4Runtime port.
START_TIMEOUT_S = 30.0
BMV2_BINARY = "simple_switch_grpc"


def entry_point(name: str) -> str:
    """Path of one of the project's console scripts: next to this interpreter first (a venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(
            f"{name} not found next to {sys.executable} nor on PATH: install the project "
            "(`make install`) and run the demo with its virtualenv's python"
        )
    return found


def controller_argv(config: Path, token_file: Path, api_port: int) -> list[str]:
    """The controller's command line in the switch node: ``config``, the job API on every address of the node at
    ``api_port`` (the hosts reach it over their management links), its bearer token in ``token_file``."""
    return [
        entry_point("netagg-controller"),
        "run",
        "--config",
        str(config),
        "--api-addr",
        f"0.0.0.0:{api_port}",
        "--token-file",
        str(token_file),
    ]


class TargetSwitch(Switch):
    """A switch node running one target process; subclasses give the command line."""

    #: Name the demo prints and logs under.
    target = "target"
    #: Slots in flight per host when --window is not given (None: the agent's own default).
    default_window: int | None = None

    def __init__(
        self, name: str, *, procs: ProcessSet, device_id: int = 1, seed: int | None = None, **params: Any
    ) -> None:
        params["inNamespace"] = True
        super().__init__(name, **params)
        self.procs = procs
        self.device_id = device_id
        self.seed = seed
        self.process: Managed | None = None

    def data_ports(self) -> dict[int, str]:
        """Switch port number -> interface name, for the data links only (not the management links)."""
        prefix = f"{self.name}-eth"
        return {port: intf.name for port, intf in sorted(self.intfs.items()) if intf.name.startswith(prefix)}

    def port_args(self) -> list[str]:
        args: list[str] = []
        for port, intf in self.data_ports().items():
            args += ["-i", f"{port}@{intf}"]
        return args

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, controllers: Any = ()) -> None:
        """Start the target in this node's namespace and wait until its P4Runtime port listens."""
        for intf in self.data_ports().values():
            # Segmentation/coalescing offloads would hand the target frames larger than the wire carries,
            # and checksum offload would send frames with unfinished checksums: the target forwards bytes.
            check_in(self, ["ethtool", "-K", intf, "tx", "off", "tso", "off", "gso", "off", "gro", "off"])
        self.process = self.procs.start(self, self.target, self.command())
        process = self.process
        wait_for(
            f"{self.target} to listen for P4Runtime on port {GRPC_PORT}",
            lambda: listens(process.pid, GRPC_PORT),
            START_TIMEOUT_S,
            process,
        )

    def stop(self, deleteIntfs: bool = False) -> None:  # Mininet names the argument
        """Stop the target process by PID (the demo's network teardown deletes the interfaces)."""
        if self.process is not None:
            self.procs.stop(self.process)


class SoftSwitchTarget(TargetSwitch):
    """netagg's software switch on raw sockets (AF_PACKET) bound to the switch's veth ends."""

    target = "softswitch"

    def command(self) -> list[str]:
        argv = [
            entry_point("netagg-softswitch"),
            *self.port_args(),
            "--device-id",
            str(self.device_id),
            "--grpc-server-addr",
            f"127.0.0.1:{GRPC_PORT}",
            "--log-level",
            "warning",
        ]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        return argv


class Bmv2Target(TargetSwitch):
    """BMv2's simple_switch_grpc, started without a program: the controller pushes it over P4Runtime."""

    target = "bmv2"
    # BMv2 processes a few hundred aggregation packets per second: a deeper window only queues packets until
    # their retransmission timers fire (4 hosts, 1 MiB: window 4 took 22 s, the agent's default 91 s).
    default_window = 4

    def command(self) -> list[str]:
        binary = shutil.which(BMV2_BINARY)
        if binary is None:
            raise ProcessError(f"{BMV2_BINARY} is not on PATH")
        # --no-p4: the controller pushes the compiled program with SetForwardingPipelineConfig. The nanomsg
        # notification socket defaults to one fixed path for every BMv2 on the machine (the file system is not
        # namespaced): give this one its own, in the demo's log directory.
        return [
            binary,
            "--device-id", str(self.device_id),
            *self.port_args(),
            "--no-p4",
            "--notifications-addr", f"ipc://{self.procs.log_dir / 'bmv2-notifications.ipc'}",
            "--",
            "--grpc-server-addr", f"127.0.0.1:{GRPC_PORT}",
        ]  # fmt: skip


TARGETS: dict[str, type[TargetSwitch]] = {"bmv2": Bmv2Target, "softswitch": SoftSwitchTarget}


def choose_target(requested: str) -> tuple[type[TargetSwitch], str]:
    """The switch class for ``requested`` (auto, bmv2, softswitch) and a sentence saying why it was chosen."""
    have_bmv2 = shutil.which(BMV2_BINARY) is not None
    if requested == "auto":
        if have_bmv2:
            return Bmv2Target, f"BMv2 ({BMV2_BINARY} found on PATH)"
        return SoftSwitchTarget, f"the softswitch ({BMV2_BINARY} is not on PATH)"
    if requested == "bmv2" and not have_bmv2:
        raise ProcessError(
            f"--target bmv2: {BMV2_BINARY} is not on PATH (add BMv2's bin directory to PATH, "
            "or use --target softswitch)"
        )
    return TARGETS[requested], f"{'BMv2' if requested == 'bmv2' else 'the softswitch'} (--target {requested})"
