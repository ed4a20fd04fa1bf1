"""The switch targets the conformance suite runs against, and how to start and stop one.

A target is a program that serves P4Runtime on a gRPC address and forwards frames between numbered ports bound
to interfaces (``-i PORT@IFACE``). ``TargetProcess`` runs it inside the switch namespace of a ``Topology``,
waits until its gRPC channel is ready (polling, with a deadline) and stops it by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from netns_util import in_namespace

DEVICE_ID = 1
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class TargetError(RuntimeError):
    """A target did not start, died, or did not stop."""


def _softswitch_program() -> str | None:
    # The console script installed next to this interpreter, so the suite tests the tree it runs from.
    beside = Path(sys.executable).parent / "netagg-softswitch"
    if beside.is_file():
        return str(beside)
    return shutil.which("netagg-softswitch")


@dataclass(frozen=True)
class Target:
    """One kind of switch: its name and how to build its command line."""

    name: str

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or None."""
        if self.program() is None:
            return {
                "softswitch": "netagg-softswitch is not installed (pip install -e .)",
                "bmv2": "simple_switch_grpc is not on PATH",
            }[self.name]
        return None

    def program(self) -> str | None:
        if self.name == "softswitch":
            return _softswitch_program()
        if self.name == "bmv2":
            return shutil.which("simple_switch_grpc")
        raise ValueError(f"unknown target {self.name!r}")

    def command(self, ports: dict[int, str], grpc_addr: str, workdir: Path) -> list[str]:
        """Command line that serves P4Runtime on ``grpc_addr`` with switch port p bound to ``ports[p]``."""
        program = self.program()
        if program is None:
            raise TargetError(self.unavailable_reason() or f"{self.name} not found")
        interfaces = [arg for port, iface in sorted(ports.items()) for arg in ("-i", f"{port}@{iface}")]
        if self.name == "softswitch":
            return [program, *interfaces, "--device-id", str(DEVICE_ID), "--grpc-server-addr", grpc_addr]
        # BMv2: no program until the pipeline is pushed; its nanomsg notification socket defaults to a fixed
        # path under /tmp, so give each instance its own. Thrift listens on 0.0.0.0:9090 inside the namespace.
        return [
            program,
            *interfaces,
            "--device-id", str(DEVICE_ID),
            "--no-p4",
            "--notifications-addr", f"ipc://{workdir}/bmv2-notifications.ipc",
            "--",
            "--grpc-server-addr", grpc_addr,
        ]


ALL_TARGETS = (Target("softswitch"), Target("bmv2"))


def selected_targets(env_value: str | None) -> list[Target]:
    """Targets named by NETAGG_TARGET (softswitch | bmv2 | all | comma list); default: all of them.

    By default a target that is not installed is reported as skipped, so BMv2 runs wherever it is present.
    """
    value = (env_value or "all").strip().lower()
    if value == "all":
        return list(ALL_TARGETS)
    names = [part.strip() for part in value.split(",") if part.strip()]
    known = {t.name: t for t in ALL_TARGETS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"NETAGG_TARGET names unknown targets {unknown}; choose from {sorted(known)} or 'all'")
    return [known[n] for n in names]


class TargetProcess:
    """A running target inside a namespace; its output goes to ``log_path``."""

    def __init__(self, target: Target, namespace: str, ports: dict[int, str], workdir: Path) -> None:
        self.target = target
        self.namespace = namespace
        self.workdir = workdir
        self.grpc_addr = f"unix:{workdir}/p4rt.sock"
        self.log_path = workdir / f"{target.name}.log"
        self._argv = in_namespace(namespace, target.command(ports, self.grpc_addr, workdir))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the target and return once its P4Runtime channel is ready."""
        with open(self.log_path, "ab") as log:  # append: keep the log of an earlier run that died
            # Own session so stop() can signal the process group: `ip netns exec` execs the program itself,
            # but a console script may spawn helpers.
            self._proc = subprocess.Popen(self._argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with grpc.insecure_channel(self.grpc_addr) as channel:
            while True:
                self.check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TargetError(
                        f"{self.target.name}: gRPC channel {self.grpc_addr} not ready after {READY_TIMEOUT_S} s\n"
                        f"{self.log_tail()}"
                    )
                try:
                    # Short slices so a target that dies while starting is reported at once.
                    grpc.channel_ready_future(channel).result(timeout=min(0.5, remaining))
                    return
                except grpc.FutureTimeoutError:
                    continue

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        """Raise TargetError with the log tail if the target has exited."""
        if self._proc is None:
            raise TargetError(f"{self.target.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise TargetError(f"{self.target.name} exited with status {code}: {' '.join(self._argv)}\n"
                              f"{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"  | {line}" for line in text[-lines:])

    def stop(self) -> None:
        """SIGTERM the target's process group, SIGKILL it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
