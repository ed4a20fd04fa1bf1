"""``netagg-softswitch --udp`` and ``netagg-controller run`` as child processes on free loopback ports.

Started and stopped by PID. Readiness is polled through the controller's job API (its stats need the switch
programmed), never waited for with a sleep.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netagg.controller.client import ControllerClient, ControllerClientError

REPO = Path(__file__).resolve().parents[2]
P4INFO = REPO / "p4" / "v1model" / "build" / "netagg.p4info.txtpb"
BMV2_JSON = REPO / "p4" / "v1model" / "build" / "netagg.json"
START_TIMEOUT = 60.0


def missing_reason() -> str | None:
    if not (P4INFO.is_file() and BMV2_JSON.is_file()):
        return "the compiled pipeline (p4/v1model/build/) is not committed yet; the software switch needs its P4Info"
    return None


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """A running software switch (UDP mode) and controller, with their logs."""

    folder: Path
    ingress_loss: float = 0.0
    egress_loss: float = 0.0
    api: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> Stack:
        grpc_port = free_port(socket.SOCK_STREAM)
        udp_port = free_port(socket.SOCK_DGRAM)
        api_port = free_port(socket.SOCK_STREAM)
        self.api = f"127.0.0.1:{api_port}"
        config = self.folder / "topology.toml"
        loss = (
            f"\n[[loss]]\nport = 1\ningress = {self.ingress_loss}\negress = {self.egress_loss}\n"
            if self.ingress_loss or self.egress_loss
            else ""
        )
        config.write_text(
            f'[switch]\naddress = "127.0.0.1:{grpc_port}"\nudp_mode = true\nagg_port = {udp_port}\n'
            f"{loss}\n[pool]\nslots = 256\ndefault_job_slots = 64\n\n[jobs]\nlease_seconds = 30\n"
        )
        self._spawn(
            "switch",
            [sys.executable, "-m", "netagg.softswitch.cli", "--grpc-server-addr", f"127.0.0.1:{grpc_port}",
             "--udp", f"127.0.0.1:{udp_port}", "--seed", "1", "--log-level", "warning"],
        )  # fmt: skip
        self._spawn(
            "controller",
            [sys.executable, "-m", "netagg.controller.cli", "run", "--config", str(config),
             "--api-addr", self.api, "--log-level", "WARNING"],
        )  # fmt: skip
        self._wait_ready()
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.folder / f"{name}.log").open("ab") as log:
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log))

    def _wait_ready(self) -> None:
        client = ControllerClient(self.api, timeout=2.0)
        deadline = time.monotonic() + START_TIMEOUT
        tick = threading.Event()
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}:\n{self.logs()}")
            try:
                client.stats()  # answers only once the switch is connected and programmed
                return
            except ControllerClientError as exc:
                last = exc
            tick.wait(0.1)
        raise TimeoutError(
            f"switch and controller not ready within {START_TIMEOUT} s ({last}):\n{self.logs()}"
        )

    def controller(self) -> ControllerClient:
        return ControllerClient(self.api, timeout=10.0)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):  # controller first, then the switch
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs.clear()
