"""Short commands run inside a Mininet node's namespace with a deadline, without going through its shell.

A node's shell (``Node.cmd``) waits for its prompt without a deadline, and an interrupt in the middle of it
leaves the shell out of step; ``mnexec -a PID`` joins the node's namespace for one command instead.
"""

from __future__ import annotations

import subprocess

from mininet.node import Node

#: Deadline of one command (ip, ethtool, tc, sysctl, ping).
COMMAND_TIMEOUT_S = 10.0


class NetworkError(RuntimeError):
    """A step of building or checking the network failed."""


def run_in(node: Node, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a short command in ``node``'s namespace with a deadline (not through its shell)."""
    try:
        return subprocess.run(
            ["mnexec", "-a", str(node.pid), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetworkError(f"{node.name}: `{' '.join(argv)}` did not finish within {timeout:.0f} s") from exc


def check_in(node: Node, argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """``run_in`` that raises NetworkError when the command fails; returns its output."""
    done = run_in(node, argv, timeout)
    if done.returncode != 0:
        raise NetworkError(
            f"{node.name}: `{' '.join(argv)}` failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done.stdout
