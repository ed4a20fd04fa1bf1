"""BML on BCube(2,2) in network namespaces: one process per host, one socket per peer and card.

Every host must end with the exact sum (the in-memory ``execute``'s result, bit for bit), move the schedule's
elements on each card in each stage, keep each card's connections on that card's address, and the kernel must
count each card's bytes as the schedule's (TCP/IP headers and acknowledgements on top). Afterwards nothing of the
network is left: no node shell, no interface in the test's namespace; the reproduction's command leaves nothing
behind either, after a complete run and after Ctrl-C half-way.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_bench_network import _root_links, interrupt_watched, run_watched

from bench.bml.rank import gradient
from bench.bml.topology import BCubeNetwork
from examples.mininet.processes import Managed
from netagg.host_agent.bml import BCube, card_load, execute, schedule

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 256 * 1024  # bytes of int32: big enough for the kernel's per-card counts to dwarf the acknowledgements

#: Names of the interfaces a BCube network makes (hosts' cards, switch ports): none may appear in the test's
#: namespace. (Other work on the machine may add interfaces of its own meanwhile.)
OURS = re.compile(r"^(h\d+-eth\d+|s\d+g\d+-p\d+)$")

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet's mnexec (Debian package mininet)"),
]


def ours(links: set[str]) -> set[str]:
    return {name for name in links if OURS.match(name)}


def _wait(procs: list[Managed], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.role} did not finish within {timeout:.0f} s:\n{proc.log_tail()}")


def test_one_sync_is_exact_on_every_host_and_every_card_carries_its_share() -> None:
    cube, seed = BCube(2, 2), 7
    links = _root_links()
    net = BCubeNetwork(cube, 50, Path(tempfile.mkdtemp(prefix="netagg-test-bml-")))
    shells: list[int] = []
    try:
        net.build()
        shells = net.node_pids()
        assert len(shells) == cube.hosts + cube.k * cube.n ** (cube.k - 1)
        assert "tbf" in net.qdisc_shaping() and "50Mbit" in net.qdisc_shaping()
        plan = net.write_plan()
        procs = [
            net.procs.start(
                node,
                f"bml-{host}",
                [sys.executable, "-m", "bench.bml.rank", "--plan", str(plan), "--host", str(host),
                 "--size", str(SIZE), "--repeat", "1", "--seed", str(seed), "--timeout", "30"],
                cwd=REPO_ROOT,
            )
            for host, node in enumerate(net.hosts)
        ]  # fmt: skip
        _wait(procs, 60)
        for proc in procs:
            assert proc.popen.returncode == 0, proc.log_tail()
        reports = [json.loads(proc.log_path.read_text().splitlines()[-1]) for proc in procs]
    finally:
        done = net.close()
    assert not done.problems, done.problems

    count = SIZE // 4
    grads = np.stack([gradient(host, count, seed) for host in range(cube.hosts)])
    reference = execute(cube, grads)
    load = card_load(cube, schedule(cube, count))
    for host, rep in enumerate(reports):
        assert rep["host"] == host
        assert rep["digest"] == hashlib.sha256(reference[host].tobytes()).hexdigest(), f"host {host}: wrong sum"
        traffic = {(stage, level): (sent, got) for stage, level, sent, got in rep["traffic"]}
        assert traffic == {(s, lvl): load[(s, host, lvl)] for s in range(2 * cube.k) for lvl in range(cube.k)}
        assert all(sent > 0 and got > 0 for sent, got in traffic.values()), traffic  # every card, every stage
        for level in range(cube.k):
            card = net.plan.card(host, level)
            assert rep["bound"][str(level)] == [card.address]
            payload_sent = 4 * sum(traffic[(s, level)][0] for s in range(2 * cube.k))
            payload_got = 4 * sum(traffic[(s, level)][1] for s in range(2 * cube.k))
            counted = rep["cards"][card.interface]
            # Headers (about 5 %) and acknowledgements (about 3 % of what comes in) on top of the payload. What
            # a card sends is counted from this host's start to its sends' acknowledgement; what it receives can
            # begin before this host starts (a peer that left the barrier first): no lower bound for that.
            assert payload_sent <= counted["tx"] <= 1.15 * payload_sent + 32 * 1024, (host, level, counted)
            assert counted["rx"] <= 1.15 * payload_got + 32 * 1024, (host, level, counted)

    # Nothing left: every node shell (and with it its namespace) is gone, no interface appeared here.
    assert [pid for pid in shells if Path(f"/proc/{pid}").exists()] == []
    assert ours(_root_links() - links) == set()


def _repro(out: Path) -> subprocess.Popen[str]:
    argv = ["--quick", "--hosts", "4", "--cards", "2", "--sizes", "0.25", "--systems", "bml,bml1", "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bml", *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def test_the_reproduction_writes_its_note_and_leaves_nothing_behind(tmp_path: Path) -> None:
    links = _root_links()
    proc = _repro(tmp_path)
    out, watch = run_watched(proc, 120)
    assert proc.returncode == 0, out
    assert watch.namespaces and not watch.leftovers(), (watch.leftovers(), out)
    assert ours(_root_links() - links) == set()
    assert out.count("teardown: stopped") == 2 and "problems" not in out, out
    note = (tmp_path / "bml.md").read_text()
    assert "| 0.25 |" in note and "BML one card / BML" in note, note
    assert (tmp_path / "bml.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    systems = {p["system"] for p in json.loads((tmp_path / "bml.json").read_text())["points"]}
    assert systems == {"bml-2,2", "bml-4,1"}


def test_interrupt_during_bml_leaves_nothing_behind(tmp_path: Path) -> None:
    links = _root_links()
    proc = _repro(tmp_path)
    out, watch = interrupt_watched(proc, "progress: BML", 120)
    assert proc.returncode == 130, out
    assert "interrupted: tearing down" in out and "teardown: stopped" in out and "problems" not in out, out
    assert watch.namespaces and not watch.leftovers(), (watch.leftovers(), out)
    assert ours(_root_links() - links) == set()
    assert not (tmp_path / "bml.md").exists()
    for line in out.splitlines():
        if "logs kept in " in line:
            shutil.rmtree(line.split("logs kept in ", 1)[1].strip(), ignore_errors=True)
