"""The controller against BMv2's simple_switch_grpc: install, read back, restart by PID, re-install.

simple_switch_grpc runs in a network namespace of the test's own (its Thrift server binds 0.0.0.0:9090); its
P4Runtime server listens on a veth address the test reaches from the root namespace. No data traffic is sent:
tables, groups and counters are checked through P4Runtime reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import finsy.switch
import pytest

from netagg import artifacts
from netagg.controller.jobs import JobManager, JoinRequest
from netagg.controller.switch import SwitchConnection

pytestmark = [pytest.mark.bmv2, pytest.mark.netns]

P4INFO, BMV2_JSON = artifacts.P4INFO, artifacts.BMV2_JSON

if os.geteuid() != 0:
    pytest.skip("needs root to create a network namespace for simple_switch_grpc", allow_module_level=True)
for tool in ("ip", "simple_switch_grpc"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not on PATH", allow_module_level=True)
if not (P4INFO.is_file() and BMV2_JSON.is_file()):
    pytest.skip("the compiled pipeline (p4/v1model/build/) is missing", allow_module_level=True)

# Names unique to this test run: other tests may create namespaces at the same time.
_TAG = f"{os.getpid() % 100000}"
NETNS = f"nactl{_TAG}"
VETH_ROOT, VETH_NS = f"nactl{_TAG}r", f"nactl{_TAG}n"
ROOT_ADDR, NS_ADDR = "10.231.77.1", "10.231.77.2"
GRPC = f"{NS_ADDR}:9559"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Bmv2:
    """simple_switch_grpc in the test's namespace, started and killed by PID."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", NETNS, shutil.which("simple_switch_grpc") or "simple_switch_grpc",
                 "--no-p4", "--device-id", "1", "--", "--grpc-server-addr", GRPC],
                stdout=out, stderr=out,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # `ip netns exec` execs the switch, so this PID is the switch itself.
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def bmv2(tmp_path: Path) -> Iterator[Bmv2]:
    sh("ip", "netns", "add", NETNS)
    switch = Bmv2(tmp_path / "bmv2.log")
    try:
        sh("ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_NS)
        sh("ip", "link", "set", VETH_NS, "netns", NETNS)
        sh("ip", "addr", "add", f"{ROOT_ADDR}/30", "dev", VETH_ROOT)
        sh("ip", "link", "set", VETH_ROOT, "up")
        sh("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{NS_ADDR}/30", "dev", VETH_NS)
        sh("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_NS, "up")
        sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        switch.start()
        yield switch
    finally:
        switch.kill()
        # Best effort: the veth may already be gone with the namespace, and cleanup must reach the next line.
        subprocess.run(["ip", "link", "del", VETH_ROOT], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, timeout=30, check=False)
        print(switch.log.read_text(errors="replace")[-2000:] if switch.log.exists() else "")


@pytest.fixture(autouse=True)
def fast_finsy_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # finsy waits 10 s before reconnecting when a connection lived less than 2 s, as here after a quick restart.
    monkeypatch.setattr(finsy.switch, "_FAIL_THROTTLE_SECS", 0.2)


def poll(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.05)


def test_install_restart_reinstall(bmv2: Bmv2, make_topo) -> None:
    conn = SwitchConnection(make_topo(GRPC), P4INFO, BMV2_JSON)
    conn.start(timeout=60)  # BMv2 takes a moment to open its P4Runtime port
    try:
        assert len(conn.read_table("l2_forward")) == 3
        assert len(conn.read_table("ingress_loss")) == 1 and len(conn.read_table("egress_loss")) == 1
        manager = JobManager(conn.topology, conn)
        admitted = {}

        def join(rank: int) -> None:
            admitted[rank] = manager.join(JoinRequest("b", 2, rank, f"10.0.0.{rank + 1}", 7000, lanes=256, timeout=30))

        threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        job = admitted[0].job
        keys = {w.rank: w.key for w in job.workers}
        workers = conn.read_table("workers")
        assert sorted(int(e.action.args["worker_id"]) for e in workers) == [0, 1]
        assert {int(e.action.args["epoch"]) for e in workers} == {job.epoch}
        assert {int(e.action.args["worker_id"]): int(e.action.args["key"]) for e in workers} == keys
        assert conn.read_counter("drops") == {i: (0, 0) for i in range(len(conn.read_counter("drops")))}

        before = conn.ready_count
        bmv2.kill()
        bmv2.start()
        poll(lambda: conn.ready_count > before and conn.is_ready, 60, "the controller to re-program BMv2")
        assert len(conn.read_table("workers")) == 2 and len(conn.read_table("results")) == 2
        # The workers keep their keys across the restart.
        results = conn.read_table("results")
        assert {int(e.match["worker_id"]): int(e.action.args["key"]) for e in results} == keys
        assert len(conn.read_table("l2_forward")) == 3

        manager.leave("b", 0)
        manager.leave("b", 1)
        assert conn.read_table("workers") == []
    finally:
        conn.stop()
