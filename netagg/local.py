"""A software switch (UDP mode) and a controller on this machine, as child processes: for tests, benches, demos.

    with LocalStack(folder).start() as stack:
        client = AllReduceClient.join(stack.controller(), "job", world_size, rank)

Workers then need no root and no network namespaces: they talk to the switch over loopback. Both processes are
started and stopped by PID; readiness is polled through the controller's job API (it answers stats only once the
switch is connected and programmed), never waited for with a sleep.

The job API's credential is a token file (``token_file``). ``controller()`` hands it to its client; child
processes find it through ``env`` (NETAGG_CONTROLLER, NETAGG_TOKEN_FILE). So that processes started the usual way
(torchrun-style workers, examples, the agent's CLI) reach it without being told, every stack running in this
process uses the same token file, made in the folder of the first, and ``start()`` exports it as
NETAGG_TOKEN_FILE until the last running stack stops (a second stack running beside the first cannot send
children to the wrong credential).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from netagg.controller.auth import ENV_TOKEN_FILE, load_or_create_token
from netagg.controller.client import ControllerClient, ControllerClientError

#: Seconds the switch and controller get to come up.
START_TIMEOUT = 60.0


class _SharedToken:
    """The token file of every LocalStack running in this process, exported as NETAGG_TOKEN_FILE meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._file: Path | None = None
        self._previous: str | None = None

    def acquire(self, folder: Path) -> Path:
        with self._lock:
            if self._users == 0:
                self._previous = os.environ.get(ENV_TOKEN_FILE)
                self._file = folder / "controller.token"
                load_or_create_token(self._file)
                os.environ[ENV_TOKEN_FILE] = str(self._file)
            self._users += 1
            assert self._file is not None
            return self._file

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                if self._previous is None:
                    os.environ.pop(ENV_TOKEN_FILE, None)
                else:
                    os.environ[ENV_TOKEN_FILE] = self._previous


_SHARED_TOKEN = _SharedToken()


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
    #: The job API's token file (mode 0600), set at ``start()``.
    token_file: Path = field(default=Path(), init=False)
    _holds_token: bool = field(default=False, init=False, repr=False)
    _switch_argv: list[str] = field(default_factory=list, init=False, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point a worker process at this stack's job API, with its credential."""
        return {"NETAGG_CONTROLLER": self.api, ENV_TOKEN_FILE: str(self.token_file)}

    def start(self) -> LocalStack:
        """Start both processes and return once the controller has programmed the switch; raises on failure."""
        self.folder.mkdir(parents=True, exist_ok=True)
        grpc_port, udp_port, api_port = free_port(), free_port(socket.SOCK_DGRAM), free_port()
        self.api = f"127.0.0.1:{api_port}"
        self.token_file = _SHARED_TOKEN.acquire(self.folder)  # before the controller starts: it reads it
        self._holds_token = True
        config = self.folder / "topology.toml"
        loss = (
            f"\n[[loss]]\nport = 1\ningress = {self.ingress_loss}\negress = {self.egress_loss}\n"
            if self.ingress_loss or self.egress_loss
            else ""
        )
        config.write_text(
            f'[switch]\naddress = "127.0.0.1:{grpc_port}"\nudp_mode = true\nagg_port = {udp_port}\n{loss}\n'
            f"[pool]\nslots = {self.pool_slots}\ndefault_job_slots = {self.job_slots}\n\n"
            f"[jobs]\nlease_seconds = {self.lease_seconds}\n\n"
            f"[api]\ntoken_file = {json.dumps(str(self.token_file))}\n"
        )
        try:
            self._switch_argv = [
                sys.executable, "-m", "netagg.softswitch.cli", "--grpc-server-addr", f"127.0.0.1:{grpc_port}",
                "--udp", f"127.0.0.1:{udp_port}", "--seed", str(self.seed), "--log-level", "warning",
            ]  # fmt: skip
            self._spawn("switch", self._switch_argv)
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

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def restart_switch(self) -> None:
        """Kill the switch by PID (SIGKILL: a crash, its registers are lost) and start it again on the same ports.

        The controller sees its P4Runtime connection drop and programs the new switch when it answers.
        """
        old = self.procs[0]
        old.kill()
        old.wait(10)
        self.procs.remove(old)
        new = self._spawn("switch", self._switch_argv)
        self.procs.remove(new)
        self.procs.insert(0, new)  # the switch stays first: stopped last, and ``switch_pid``

    def _wait_ready(self) -> None:
        client = ControllerClient(self.api, timeout=2.0, token_file=self.token_file)
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
        return ControllerClient(self.api, timeout=timeout, token_file=self.token_file)

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
        if self._holds_token:
            self._holds_token = False
            _SHARED_TOKEN.release()
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
