"""The controller driving the real software switch in UDP mode: aggregation end to end, statistics, restarts.

Workers here are plain UDP sockets speaking netagg.wire; the controller runs in-process with its HTTP API, and
the software switch is a child process started (and killed) by PID.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import finsy.switch
import numpy as np
import pytest
from pki import make_pki

from netagg import artifacts
from netagg.constants import MsgType
from netagg.controller.auth import Tenant
from netagg.controller.client import ControllerClient, JoinResult
from netagg.controller.errors import ConfigError, SwitchUnavailable
from netagg.controller.service import Controller
from netagg.controller.topology import parse_topology
from netagg.wire import AggHeader, decode, encode, size_for_lanes

pytestmark = pytest.mark.loopback

P4INFO, BMV2_JSON = artifacts.P4INFO, artifacts.BMV2_JSON
TOKEN = "loopback-test-token"

if not (P4INFO.is_file() and BMV2_JSON.is_file()):
    pytest.skip("the compiled pipeline (p4/v1model/build/) is not committed yet; the software switch needs its P4Info",
                allow_module_level=True)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.05)


class SoftSwitchProcess:
    """netagg-softswitch in UDP mode, as a child process this test owns."""

    def __init__(self, grpc_port: int, udp_port: int, log: Path, args: tuple[str, ...] = ()) -> None:
        self.grpc_port, self.udp_port, self.log, self.args = grpc_port, udp_port, log, args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netagg.softswitch.cli", "--grpc-server-addr", f"127.0.0.1:{self.grpc_port}",
                 "--udp", f"127.0.0.1:{self.udp_port}", "--log-level", "warning", *self.args],
                stdout=out, stderr=out,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to our own child, by PID: a crash, not a clean stop
            self.proc.wait(10)
        self.proc = None


@dataclass
class Worker:
    rank: int
    sock: socket.socket
    join: JoinResult | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, tsi: int, slot: int, values: np.ndarray, key: int | None = None) -> None:
        assert self.join is not None
        header = AggHeader(MsgType.UPDATE, size_for_lanes(self.join.lanes), self.join.job_id, tsi, slot, 0, 0, 0,
                           key=self.join.key if key is None else key)
        self.sock.sendto(encode(header, values), (self.join.switch.addr, self.join.switch.port))

    def receive(self) -> tuple[AggHeader, np.ndarray]:
        data, _ = self.sock.recvfrom(65536)
        return decode(data)


@contextlib.contextmanager
def running(tmp_path: Path, loss: list[dict[str, float]] | None = None, tls: dict[str, str] | None = None,
            switch_args: tuple[str, ...] = ()) -> Iterator[tuple[SoftSwitchProcess, Controller, ControllerClient]]:
    """A software switch child process and an in-process controller driving it, with its API client."""
    switch = SoftSwitchProcess(free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM), tmp_path / "switch.log",
                               switch_args)
    switch.start()
    topology = parse_topology({
        "switch": {"address": f"127.0.0.1:{switch.grpc_port}", "udp_mode": True, "agg_port": switch.udp_port,
                   **(tls or {})},
        "pool": {"slots": 64, "default_job_slots": 8},
        "loss": loss or [],
    })
    controller = Controller(topology, p4info=P4INFO, bmv2_json=BMV2_JSON, api_address=("127.0.0.1", 0),
                            tenants=[Tenant("test", TOKEN)])
    try:
        controller.start(connect_timeout=30)
        assert controller.api is not None
        yield switch, controller, ControllerClient(controller.api.url, timeout=10, token=TOKEN)
    finally:
        controller.stop()
        switch.kill()
        print(switch.log.read_text(errors="replace")[-3000:])


@pytest.fixture(autouse=True)
def fast_finsy_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # finsy waits 10 s before reconnecting when a connection lived less than 2 s, as here after a quick restart.
    monkeypatch.setattr(finsy.switch, "_FAIL_THROTTLE_SECS", 0.2)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[SoftSwitchProcess, Controller, ControllerClient]]:
    with running(tmp_path) as parts:
        yield parts


def join_job(client: ControllerClient, name: str, world_size: int, lanes: int) -> list[Worker]:
    workers = []
    for rank in range(world_size):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        workers.append(Worker(rank, sock))
    errors: list[BaseException] = []

    def run(w: Worker) -> None:
        try:
            w.join = client.join(name, world_size=world_size, rank=w.rank, addr="127.0.0.1", port=w.port,
                                 lanes=lanes, slots=8, timeout=20)
        except BaseException as ex:  # noqa: BLE001 - surfaced below
            errors.append(ex)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    return workers


def aggregate(workers: list[Worker], tsis: range) -> None:
    """Every worker sends one UPDATE per tsi (slot = tsi % 8) and must get the exact sum back."""
    lanes = workers[0].join.lanes
    for tsi in tsis:
        contributions = [np.arange(lanes, dtype=np.int64) * (w.rank + 1) + tsi for w in workers]
        for w, values in zip(workers, contributions):
            w.send(tsi, tsi % 8, values)
        expected = np.sum(contributions, axis=0)
        for w in workers:
            header, got = w.receive()
            assert header.msg_type == MsgType.RESULT and header.tsi == tsi and header.slot == tsi % 8
            assert header.job == w.join.job_id and header.key == w.join.key
            np.testing.assert_array_equal(got.astype(np.int64), expected)


def test_two_jobs_aggregate_and_stats_match(rig) -> None:
    _, _, client = rig
    a = join_job(client, "a", 2, 32)
    b = join_job(client, "b", 3, 256)
    assert a[0].join.job_id != b[0].join.job_id
    aggregate(a, range(5))
    aggregate(b, range(3))

    def counted() -> bool:
        stats = client.stats()
        return stats["jobs"]["a"]["aggregated"]["packets"] == 10 and stats["jobs"]["b"]["completed"]["packets"] == 3

    poll(counted, 10, "the counters to show every packet")
    stats = client.stats()
    for name, world, rounds in (("a", 2, 5), ("b", 3, 3)):
        job = stats["jobs"][name]
        assert job["aggregated"]["packets"] == world * rounds
        assert job["completed"]["packets"] == rounds
        assert job["retransmit_answered"]["packets"] == 0
        assert sum(v["packets"] for v in job["drops"].values()) == 0

    # Teardown: the switch forgets the workers, so their next UPDATE is an unknown worker.
    for w in a:
        client.leave("a", w.rank)
    a[0].send(99, 0, np.zeros(32, dtype=np.int64))
    poll(lambda: client.stats()["switch"]["drops"]["unknown_worker"]["packets"] == 1, 10,
         "the UPDATE of a torn-down job to be dropped as unknown_worker")
    assert [j["job"] for j in client.jobs()["jobs"]] == ["b"]
    # The torn-down job's final figures stay readable (a short job can end before anyone asked).
    final = client.stats("a")["jobs"]["a"]
    assert final["state"] == "finished" and final["aggregated"]["packets"] == 10 and final["completed"]["packets"] == 5
    assert client.stats()["jobs"]["b"]["state"] == "active"


def test_an_update_without_the_workers_key_is_dropped(rig) -> None:
    _, _, client = rig
    workers = join_job(client, "keyed", 2, 32)
    # Right source address and port, another worker's key (or none): the switch must not add it.
    workers[0].send(0, 0, np.ones(32, dtype=np.int64), key=workers[1].join.key)
    workers[0].send(0, 0, np.ones(32, dtype=np.int64), key=0)
    poll(lambda: client.stats("keyed")["jobs"]["keyed"]["drops"]["bad_key"]["packets"] == 2, 10,
         "both UPDATEs to be dropped as bad_key")
    aggregate(workers, range(2))  # the round was never opened by them: the real contributions sum alone


def test_switch_restart_is_reprogrammed_without_help(rig) -> None:
    switch, controller, client = rig
    workers = join_job(client, "survivor", 2, 64)
    aggregate(workers, range(2))
    before = controller.switch.ready_count
    switch.kill()
    switch.start()
    poll(lambda: controller.switch.ready_count > before and controller.switch.is_ready, 60,
         "the controller to re-program the restarted switch")
    # The workers still use the keys of their join answer: the re-installed entries carry the same ones.
    aggregate(workers, range(2, 6))
    poll(lambda: client.stats("survivor")["jobs"]["survivor"]["completed"]["packets"] == 4, 10,
         "the restarted switch's counters")


def test_loss_settings_reach_the_drop_simulator(tmp_path: Path) -> None:
    with running(tmp_path, loss=[{"port": 1, "ingress": 1.0}]) as (_, _, client):
        workers = join_job(client, "lossy", 2, 32)
        for w in workers:
            w.send(0, 0, np.ones(32, dtype=np.int64))
        poll(lambda: client.stats("lossy")["jobs"]["lossy"]["drops"]["simulated_loss"]["packets"] == 2, 10,
             "both UPDATEs to be dropped by the drop simulator")
        assert client.stats("lossy")["jobs"]["lossy"]["aggregated"]["packets"] == 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_controller_programs_a_switch_over_mutual_tls(tmp_path: Path, pki: Path) -> None:
    switch_tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                  "--tls-client-ca", str(pki / "ca.pem"))
    tls = {"tls_ca": str(pki / "ca.pem"), "tls_cert": str(pki / "client.pem"), "tls_key": str(pki / "client.key")}
    with running(tmp_path, tls=tls, switch_args=switch_tls) as (_, controller, client):
        assert controller.switch.is_ready
        workers = join_job(client, "private", 2, 32)
        aggregate(workers, range(3))


def test_a_controller_without_a_client_certificate_is_refused_by_a_mutual_tls_switch(tmp_path: Path,
                                                                                     pki: Path) -> None:
    switch = SoftSwitchProcess(free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM), tmp_path / "switch.log",
                               ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                                "--tls-client-ca", str(pki / "ca.pem")))
    switch.start()
    try:
        for tls in ({}, {"tls_ca": str(pki / "ca.pem")}):  # plain TCP; TLS without a client certificate
            topology = parse_topology({"switch": {"address": f"127.0.0.1:{switch.grpc_port}", "udp_mode": True,
                                                  "agg_port": switch.udp_port, **tls}})
            controller = Controller(topology, p4info=P4INFO, bmv2_json=BMV2_JSON, api_address=("127.0.0.1", 0),
                                    tenants=[Tenant("test", TOKEN)])
            with pytest.raises(SwitchUnavailable):
                controller.start(connect_timeout=2)
    finally:
        switch.kill()


def test_a_missing_tls_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    topology = parse_topology({"switch": {"address": "127.0.0.1:1", "udp_mode": True, "agg_port": 9,
                                          "tls_ca": str(tmp_path / "nowhere.pem")}})
    with pytest.raises(ConfigError, match=f"tls_ca: cannot read {tmp_path / 'nowhere.pem'}"):
        Controller(topology, p4info=P4INFO, bmv2_json=BMV2_JSON, tenants=[Tenant("test", TOKEN)])
