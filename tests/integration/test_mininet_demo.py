"""The Mininet demo end to end on the softswitch, and its teardown when interrupted half-way.

The demo runs as a subprocess (``python -m examples.mininet``) from the repository root. The interrupt tests
record, just before sending SIGINT, every process descended from the demo and the network namespaces those
processes are in; afterwards none of those processes may be alive and no process on the machine may still be
in one of those namespaces (a namespace lives as long as a process or a bind mount holds it), no named
namespace may hold one, and no interface with the demo's names may have appeared here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.mininet.topology import API_PORT, GRPC_PORT

pytestmark = pytest.mark.netns

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Interface names the demo gives (they live in the nodes' namespaces; none may show up in ours).
#: The summary's last word on the results: each host's SHA-256 equals the locally computed reference's.
RESULT_OK = re.compile(r"^result: every host got the reference result, bit for bit$", re.MULTILINE)
DEMO_INTF = re.compile(r"^(h\d+-eth0|h\d+-mgmt|s1-eth\d+|s1-m\d+)(@.*)?$")


def _requirements() -> str | None:
    try:
        import mininet.node  # noqa: F401
    except ImportError:
        return "Mininet's Python package is not importable (see docs/demo.md, 'Installing')"
    missing = [t for t in ("mnexec", "ifconfig", "tc", "ethtool") if shutil.which(t) is None]
    return (
        f"needs {', '.join(missing)} (Debian packages mininet, net-tools, iproute2, ethtool)"
        if missing
        else None
    )


_MISSING = _requirements()
needs_mininet = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def _targets() -> list[object]:
    """Targets named by NETAGG_TARGET (softswitch | bmv2 | all | comma list; default all), as the conformance
    suite reads it; bmv2 runs are skipped where simple_switch_grpc is not on PATH."""
    wanted = os.environ.get("NETAGG_TARGET", "all").strip()
    names = ["softswitch", "bmv2"] if wanted in ("", "all") else [t.strip() for t in wanted.split(",")]
    unknown = set(names) - {"softswitch", "bmv2"}
    if unknown:
        raise ValueError(f"NETAGG_TARGET names unknown targets {sorted(unknown)}")
    return [pytest.param(n, id=n, marks=[pytest.mark.bmv2] if n == "bmv2" else []) for n in names]


TARGETS = _targets()


def demo_argv(target: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "examples.mininet", "--target", target, *options]


def run_demo(target: str, *options: str, timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
    """Run the demo to the end. A successful run removes its log directory itself; a failed one keeps it for
    the test's message."""
    return subprocess.run(
        demo_argv(target, *options),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def remove_logs(output: str) -> None:
    """Delete the log directory the demo kept after an interrupt (once the test has passed)."""
    for match in re.finditer(r"^logs kept in (\S+/netagg-demo-[^/\s]+)$", output, re.MULTILINE):
        shutil.rmtree(match.group(1), ignore_errors=True)


@needs_mininet
@pytest.mark.parametrize("target", TARGETS)
def test_demo_three_hosts_get_the_reference_result(target: str) -> None:
    done = run_demo(
        target, "--hosts", "3", "--size", "200000", "--lanes", "64", "--iterations", "1", "--timeout", "60"
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"(--target {target})" in out and f"switch: {target} pid" in out
    if shutil.which("ping"):
        assert "connectivity: 2 hosts ping h1 through the switch" in out
    for host in ("h1", "h2", "h3"):
        assert re.search(rf"^  {host}\s+[\d.]+\s+[\d.]+\s+\d+\s+bit-exact \(sha256 ", out, re.MULTILINE), out
    assert RESULT_OK.search(out), out
    assert "teardown: stopped" in out and "problems:" not in out


@needs_mininet
@pytest.mark.parametrize("target", TARGETS)
def test_demo_with_loss_and_shaping_recovers(target: str) -> None:
    done = run_demo(
        target,
        "--hosts",
        "2",
        "--size",
        "65536",
        "--loss",
        "0.02",
        "--bw",
        "50",
        "--iterations",
        "1",
        "--timeout",
        "90",
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "links shaped to 50 Mbit/s" in out and "simulated loss 0.02" in out
    assert re.search(r"^switch drops \(all traffic\): .*simulated_loss \d+", out, re.MULTILINE), out
    assert RESULT_OK.search(out), out


@needs_mininet
def test_demo_trains_the_ddp_example_over_the_softswitch() -> None:
    done = run_demo("softswitch", "--train", "--hosts", "2", "--epochs", "1", "--timeout", "240", timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"^  h1: \[netagg\] final test accuracy [\d.]+% on \d+ samples$", out, re.MULTILINE), out
    assert re.search(r"^train: done in ", out, re.MULTILINE)
    assert "teardown: stopped" in out and "problems:" not in out


@contextlib.contextmanager
def _ports_held_here(*ports: int) -> Iterator[None]:
    """Listen on ``ports`` of 127.0.0.1 in this (the demo's own) namespace, as another switch and controller on
    the machine would; a port that some other process already holds is busy all the same."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.listen()
        yield


@needs_mininet
@pytest.mark.parametrize("target", TARGETS)
def test_demo_works_while_its_default_ports_are_busy_outside_its_namespaces(target: str) -> None:
    # The switch's P4Runtime port and the controller's job API port are taken in the namespace the demo runs in.
    # Its own processes run in the switch node's namespace; the demo must wait for them, not take the other
    # servers for them. Without the ping check nothing else gives the controller time to start: the agents
    # found no job API and every host failed with ControllerUnreachable.
    with _ports_held_here(GRPC_PORT, API_PORT):
        done = run_demo(target, "--hosts", "2", "--size", "16384", "--iterations", "1", "--no-ping", "--timeout", "60")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "ControllerUnreachable" not in out
    assert RESULT_OK.search(out), out


@needs_mininet
def test_demo_refuses_bmv2_when_it_is_absent_and_says_so() -> None:
    if shutil.which("simple_switch_grpc"):
        pytest.skip("simple_switch_grpc is on PATH")
    done = subprocess.run(
        [sys.executable, "-m", "examples.mininet", "--target", "bmv2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "simple_switch_grpc is not on PATH" in done.stderr


# -- interrupted half-way ------------------------------------------------------------------------------------


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def _named_netns_inodes() -> dict[str, int]:
    found = {}
    for path in Path("/run/netns").glob("*") if Path("/run/netns").is_dir() else ():
        try:
            found[path.name] = path.stat().st_ino
        except OSError:
            continue
    return found


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a running process; None if it is gone or a zombie (exited, not yet reaped by
    whoever inherited it: it holds no namespace or socket any more)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """PID -> start time of every live process descended from ``root``."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = st
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _processes_in(namespaces: set[int]) -> list[int]:
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and _netns_inode(int(e.name)) in namespaces
    ]


def _lines(proc: subprocess.Popen[str], deadline: float) -> Iterator[str]:
    """The demo's output lines as they come, until ``deadline``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                return
            yield line


def _describe(pids: list[int]) -> str:
    """PIDs with their state and command lines, for failure messages."""
    parts = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            cmdline, state = "(gone)", "?"
        parts.append(f"{pid} [{state}] {cmdline.strip()}")
    return "; ".join(parts)


class Watch:
    """Every process seen descended from the demo (PID -> start time) and every namespace they were in."""

    def __init__(self, root: int, own_ns: int | None) -> None:
        self.root = root
        self.own_ns = own_ns
        self.started: dict[int, int] = {}
        self.namespaces: set[int] = set()

    def sample(self) -> None:
        for pid, start in _descendants(self.root).items():
            self.started.setdefault(pid, start)
            ns = _netns_inode(pid)
            if ns is not None and ns != self.own_ns:
                self.namespaces.add(ns)


def interrupt_when(marker: re.Pattern[str], target: str, *options: str) -> None:
    """Start the demo; once a line matches ``marker`` and a process of the demo is inside a namespace of its
    own, send SIGINT; then check that nothing of the demo is left.

    Sampling goes on until the demo exits, because the demo finishes the step it is in (creating a node, say)
    before the interrupt takes effect, and whatever that step starts must be taken down too.
    """
    links_before = _root_links()
    named_before = _named_netns_inodes()
    proc = subprocess.Popen(
        demo_argv(target, *options),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    watch = Watch(proc.pid, _netns_inode(os.getpid()))
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout or ()), daemon=True)
    try:
        for line in _lines(proc, time.monotonic() + 90):
            seen.append(line)
            if marker.search(line):
                break
        else:
            pytest.fail(f"no line matching {marker.pattern!r} within 90 s:\n{''.join(seen)}")
        reader.start()
        deadline = time.monotonic() + 30
        watch.sample()
        while not watch.namespaces:
            assert time.monotonic() < deadline, "the demo started no process in a namespace within 30 s"
            time.sleep(0.005)
            watch.sample()
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the demo did not exit within 60 s of SIGINT"
            watch.sample()
            time.sleep(0.02)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = "".join(seen)
    assert proc.returncode == 130, out
    assert "interrupted: tearing down" in out and "problems:" not in out, out
    survivors = [
        pid for pid, start in watch.started.items() if (st := _stat(pid)) is not None and st[1] == start
    ]
    assert not survivors, f"processes of the demo still alive: {_describe(survivors)}\n{out}"
    assert not _processes_in(watch.namespaces), "processes are still in the demo's namespaces"
    new_named = {name for name, ino in _named_netns_inodes().items() if name not in named_before}
    assert not {name for name in new_named if _named_netns_inodes().get(name) in watch.namespaces}
    assert not {name for name in _root_links() - links_before if DEMO_INTF.match(name)}
    remove_logs(out)


@needs_mininet
def test_interrupt_while_the_network_is_built_leaves_nothing_behind() -> None:
    # The "logs:" line comes just before the first node is created: SIGINT lands during the build.
    interrupt_when(re.compile(r"^logs: "), "softswitch", "--hosts", "4")


@needs_mininet
@pytest.mark.parametrize("target", TARGETS)
def test_interrupt_after_the_switch_started_leaves_nothing_behind(target: str) -> None:
    interrupt_when(re.compile(rf"^switch: {target} pid \d+"), target, "--hosts", "3")


@needs_mininet
@pytest.mark.parametrize("target", TARGETS)
def test_interrupt_during_the_job_leaves_nothing_behind(target: str) -> None:
    # Shaped links make the job take long enough to be caught running.
    interrupt_when(
        re.compile(r"^progress: .*% \("),
        target,
        "--hosts",
        "3",
        "--size",
        "4000000",
        "--bw",
        "5",
        "--iterations",
        "2",
        "--timeout",
        "120",
    )
