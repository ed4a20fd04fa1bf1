"""Processes the demo starts inside Mininet nodes, each tracked by PID and stopped by PID.

A process is started through ``mnexec -da <node shell pid>`` (Mininet's ``Node.popen``): it joins the node's
network namespace and becomes the leader of a new session, so a terminal's Ctrl-C reaches the demo alone and
the demo decides the order things stop in. Stopping sends SIGTERM to that process group, waits with a
deadline, then sends SIGKILL. Nothing is ever looked up or killed by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from .signals import deferred_interrupts

#: How long a process gets to exit after SIGTERM before it is killed.
TERM_GRACE_S = 5.0
#: How long to wait for a killed process to be reaped.
KILL_WAIT_S = 5.0


class NodeLike(Protocol):
    """The part of a Mininet node used here."""

    name: str
    pid: int

    def popen(self, *args: object, **kwargs: object) -> subprocess.Popen[bytes]: ...


class ProcessError(RuntimeError):
    """A process failed to start, exited early, or was not ready in time."""


@dataclass
class Managed:
    """One process the demo started: its role, node, PID and log file."""

    role: str
    node: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            with self.log_path.open(errors="replace") as f:
                return "".join(deque(f, maxlen=lines)).rstrip()
        except OSError:
            return "(no log)"


class ProcessSet:
    """Starts processes in nodes, remembers them, stops all of them (newest first)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Managed] = []

    @property
    def processes(self) -> list[Managed]:
        return list(self._procs)

    def start(
        self,
        node: NodeLike,
        role: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Managed:
        """Start ``argv`` inside ``node``'s namespace; stdout and stderr go to ``<log_dir>/<role>.log``."""
        log_path = self.log_dir / f"{role}.log"
        # An interrupt between the fork and the bookkeeping would leave a process nobody stops.
        with deferred_interrupts():
            log = log_path.open("wb")
            try:
                popen = node.popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env if env is not None else os.environ.copy(),
                    cwd=cwd,
                )
            except BaseException:
                log.close()
                raise
            managed = Managed(role, node.name, popen, log_path, log)
            self._procs.append(managed)
        return managed

    def stop(self, proc: Managed) -> None:
        """Stop one process (and its process group) by PID; safe to call twice."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                try:
                    proc.popen.wait(KILL_WAIT_S)
                except subprocess.TimeoutExpired:
                    pass  # reported by stop_all's survivors check
        else:
            # The leader is gone; children it left in its group (if any) go too.
            _signal_group(proc.pid, signal.SIGKILL)
        proc._log.close()

    def stop_all(self) -> list[Managed]:
        """Stop every process, newest first; return those still alive afterwards (should be none)."""
        for proc in reversed(self._procs):
            self.stop(proc)
        return [p for p in self._procs if p.alive()]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The process is its group's leader (mnexec -d calls setsid), so the group id is its PID.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The group id was reused by another session after our process and its group ended.
        pass


def wait_for(
    what: str, ready: Callable[[], bool], timeout: float, proc: Managed | None = None, interval: float = 0.05
) -> None:
    """Poll ``ready`` until true; raise ProcessError after ``timeout`` s or if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and not proc.alive():
            raise ProcessError(
                f"{proc.role} (pid {proc.pid}) exited with status {proc.popen.returncode} "
                f"while waiting for {what}; its log {proc.log_path}:\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"; its log {proc.log_path}:\n{proc.log_tail()}" if proc is not None else ""
            raise ProcessError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a TCP socket listening on ``port`` (read from /proc, no setns).

    The listening sockets of the process's network namespace (``/proc/PID/net/tcp``, ``tcp6``) count only when
    the process holds them (``/proc/PID/fd``). Whether the port merely listens in the process's namespace says
    nothing right after ``Node.popen``: the process is then usually still ``mnexec`` in the demo's own namespace,
    before it enters the node's (194 of 200 starts, measured), and another server on the machine listening on
    the same port there would pass for it.
    """
    listening: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            text = Path(f"/proc/{pid}/net/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            # fields: sl, local address:port (hex), remote, state (0A: LISTEN), ..., inode (the 10th)
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(fields[9])
    if not listening:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target[len("socket:[") : -1] in listening:
            return True
    return False
