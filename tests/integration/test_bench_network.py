"""The network benchmark (``python -m bench.network``) in its smallest form: the report is produced, and
nothing it made (process, namespace, interface) is left, after a complete run and after Ctrl-C half-way.

While the benchmark runs, every process descended from it and every network namespace those processes are in
are recorded; afterwards none of those processes may be alive, no process may be in one of those namespaces,
and the interfaces of the namespace the test runs in must be the same as before.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The smallest run: 2 hosts, one rate, a quarter MiB, one repetition, the lossless and one lossy point.
SMALL = ["--quick", "--hosts", "2", "--sizes", "0.25", "--repeat", "1", "--loss", "0,1"]

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet's mnexec (Debian package mininet)"),
]


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process; None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


class Watch(threading.Thread):
    """Samples, until told to stop, the processes descended from ``root`` and their network namespaces."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.own_ns = _netns(os.getpid())
        self.started: dict[int, int] = {}
        self.namespaces: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.sample()

    def sample(self) -> None:
        table = {int(e.name): st for e in Path("/proc").iterdir() if e.name.isdigit() and (st := _stat(int(e.name)))}
        frontier = [self.root]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, start) in table.items():
                if ppid == parent and pid not in self.started:
                    self.started[pid] = start
                    frontier.append(pid)
                    ns = _netns(pid)
                    if ns is not None and ns != self.own_ns:
                        self.namespaces.add(ns)

    def leftovers(self) -> list[str]:
        alive = [pid for pid, start in self.started.items() if (st := _stat(pid)) and st[1] == start]
        inside = [
            int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _netns(int(e.name)) in self.namespaces
        ]
        return [f"alive: {pid}" for pid in alive] + [f"in a namespace of the run: {pid}" for pid in inside]


def run_watched(proc: subprocess.Popen[str], timeout: float) -> tuple[str, Watch]:
    """``proc``'s whole output, waited for at most ``timeout`` s while a Watch records its processes and
    namespaces; ``proc`` is killed (by PID) if it is still running after that."""
    watch = Watch(proc.pid)
    watch.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _stop(proc, watch)
    return out, watch


def interrupt_watched(proc: subprocess.Popen[str], marker: str, timeout: float) -> tuple[str, Watch]:
    """Read ``proc``'s output until a line holds ``marker`` (looked for during ``timeout`` s), send it SIGINT and
    collect the rest of its output, while a Watch records its processes and namespaces."""
    watch = Watch(proc.pid)
    watch.start()
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            seen.append(line)
            if marker in line or time.monotonic() > deadline:
                break
        assert any(marker in line for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        seen.append(rest)
    finally:
        _stop(proc, watch)
    return "".join(seen), watch


def _stop(proc: subprocess.Popen[str], watch: Watch) -> None:
    watch.done.set()
    watch.join()
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _start(*options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.network", *SMALL, *options],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def test_quick_run_writes_the_report_and_leaves_nothing_behind(tmp_path: Path) -> None:
    links = _root_links()
    proc = _start("--out", str(tmp_path))
    out, watch = run_watched(proc, 240)
    assert proc.returncode == 0, out
    assert watch.namespaces, "no process of the run was seen in a namespace of its own"
    assert not watch.leftovers(), watch.leftovers()
    assert _root_links() == links
    assert "progress: gloo" in out and "progress: netagg" in out and "teardown: stopped" in out, out

    results = json.loads((tmp_path / "results.json").read_text())
    systems = {(p["system"], p["loss"]) for p in results["points"]}
    assert systems == {("gloo", 0.0), ("netagg-softswitch", 0.0), ("netagg-softswitch", 0.01)}, systems
    for point in results["points"]:
        assert not point["error"], point
        assert len(point["reps"]) == 1 and point["reps"][0]["seconds"] > 0, point
    report = (tmp_path / "README.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| 2 | 20 | 0.25 |"))
    assert "**" in row  # the speedup
    assert "| 1 % |" in report and "tbf" in report
    for png in ("speedup_vs_hosts.png", "speedup_vs_rate.png", "goodput_vs_loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupt_during_netagg_leaves_nothing_behind(tmp_path: Path) -> None:
    links = _root_links()
    proc = _start("--out", str(tmp_path))
    out, watch = interrupt_watched(proc, "progress: netagg (softswitch)", 120)
    assert proc.returncode == 130, out
    assert "interrupted: tearing down" in out and "teardown: stopped" in out and "problems" not in out, out
    assert watch.namespaces and not watch.leftovers(), (watch.leftovers(), out)
    assert _root_links() == links
    assert not (tmp_path / "README.md").exists()
    kept = [line.split("logs kept in ", 1)[1].strip() for line in out.splitlines() if "logs kept in " in line]
    for folder in kept:
        shutil.rmtree(folder, ignore_errors=True)
