"""A software switch (UDP mode) and a controller on this machine, as child processes: for tests, benches, demos.

    with LocalStack(folder).start() as stack:
        client = AllReduceClient.join(stack.controller(), "job", world_size, rank)

Workers then need no root and no network namespaces: they talk to the switch over loopback. Both processes are
started and stopped by PID; readiness is polled through the controller's job API (it answers stats only once the
switch is connected and programmed), never waited for with a sleep.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from netagg.controller.client import ControllerClient, ControllerClientError

#: Seconds the switch and controller get to come up.
START_TIMEOUT = 60.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP or UDP by ``kind``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalStack:
    """A running ``netagg-softswitch --udp`` and ``netagg-controller run``, with their logs in ``folder``."""

    folder: Path
    ingress_loss: float = 0.0
    egress_loss: float = 0.0
    pool_slots: int = 256
    job_slots: int = 64
    lease_seconds: float = 30.0
    seed: int = 1
    api: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> LocalStack:
        """Start both processes and return once the controller has programmed the switch; raises on failure."""
        self.folder.mkdir(parents=True, exist_ok=True)
        grpc_port, udp_port, api_port = free_port(), free_port(socket.SOCK_DGRAM), free_port()
        self.api = f"127.0.0.1:{api_port}"
        config = self.folder / "topology.toml"
        loss = (
            f"\n[[loss]]\nport = 1\ningress = {self.ingress_loss}\negress = {self.egress_loss}\n"
            if self.ingress_loss or self.egress_loss
            else ""
        )
        config.write_text(
            f'[switch]\naddress = "127.0.0.1:{grpc_port}"\nudp_mode = true\nagg_port = {udp_port}\n{loss}\n'
            f"[pool]\nslots = {self.pool_slots}\ndefault_job_slots = {self.job_slots}\n\n"
            f"[jobs]\nlease_seconds = {self.lease_seconds}\n"
        )
        try:
            self._spawn(
                "switch",
                [sys.executable, "-m", "netagg.softswitch.cli", "--grpc-server-addr", f"127.0.0.1:{grpc_port}",
                 "--udp", f"127.0.0.1:{udp_port}", "--seed", str(self.seed), "--log-level", "warning"],
            )  # fmt: skip
            self._spawn(
                "controller",
                [sys.executable, "-m", "netagg.controller.cli", "run", "--config", str(config),
                 "--api-addr", self.api, "--log-level", "WARNING"],
            )  # fmt: skip
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
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
                client.stats()
                return
            except ControllerClientError as exc:
                last = exc
            tick.wait(0.1)
        raise TimeoutError(
            f"switch and controller not ready within {START_TIMEOUT} s ({last}):\n{self.logs()}"
        )

    def controller(self, timeout: float = 10.0) -> ControllerClient:
        """A job API client of this stack's controller."""
        return ControllerClient(self.api, timeout=timeout)

    @property
    def switch_pid(self) -> int:
        return self.procs[0].pid

    def logs(self) -> str:
        """The tail of every log, for error messages."""
        return "\n".join(
            f"--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        """Stop the controller, then the switch, by PID (terminate, then kill after 10 s). Idempotent."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
