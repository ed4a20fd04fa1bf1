"""How the demo decides that a process it started is ready: it must itself listen on the port (no root needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

# The demo is not part of the installed distribution: import it from the repository root (`python -m pytest`).
from examples.mininet.processes import listens

pytestmark = pytest.mark.loopback


@pytest.fixture
def listening() -> Iterator[int]:
    """A TCP port this test process listens on (127.0.0.1, chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_process_listens_on_the_port_it_holds(listening: int) -> None:
    assert listens(os.getpid(), listening)


def test_another_process_in_the_same_namespace_does_not_pass_for_it(listening: int) -> None:
    # What the demo met: right after Node.popen the new process is still in the demo's own namespace, where
    # another server held the port; "the port listens in the process's namespace" took that server for it.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert not listens(child.pid, listening)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)


def test_a_port_nobody_listens_on_and_a_gone_process(listening: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as idle:
        idle.bind(("127.0.0.1", 0))  # bound, not listening
        assert not listens(os.getpid(), idle.getsockname()[1])
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    assert not listens(child.pid, listening)
