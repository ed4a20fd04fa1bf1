"""Child processes of the benchmarks: started with a readiness line on stdout, stopped by PID."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REPO = Path(__file__).resolve().parents[1]


class ReadyProcess:
    """A child that prints one line starting with ``ready`` once it serves; ``address`` is the rest of that line."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        # Own session: stop() signals the whole group (``ip netns exec`` may sit between us and the program).
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, start_new_session=True
        )
        try:
            self.address = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _wait_ready(self) -> str:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: not ready within {READY_TIMEOUT_S} s")
            readable, _, _ = select.select([self._proc.stdout], [], [], remaining)
            if readable:
                chunk = os.read(self._proc.stdout.fileno(), 1)
                if not chunk:
                    err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                    raise RuntimeError(f"{self.name}: exited before it was ready:\n{err}")
                line += chunk
        text = line.decode().strip()
        if not text.startswith("ready"):
            raise RuntimeError(f"{self.name}: unexpected first line {text!r}")
        return text.removeprefix("ready").strip()

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it does not exit in time."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=STOP_TIMEOUT_S)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
