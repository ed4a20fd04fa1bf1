"""The job API over HTTP on 127.0.0.1, through the Python client (no switch: a recording programmer)."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from netagg.constants import NUM_DROP_REASONS, NUM_JOB_STATS, DropReason, JobStat
from netagg.controller.api import ApiServer
from netagg.controller.auth import Tenant
from netagg.controller.client import ControllerClient, ControllerClientError, ControllerUnreachable, JoinResult
from netagg.controller.epochs import MAX_EPOCH
from netagg.controller.jobs import Job, JobManager
from netagg.controller.stats import StatsReader

pytestmark = pytest.mark.loopback


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def install_job(self, job: Job) -> None:
        self.calls.append(("install", job.name))

    def remove_job(self, job: Job) -> None:
        self.calls.append(("remove", job.name))


class Counters:
    """A CounterSource over plain dicts."""

    pipeline_generation = 1

    def __init__(self) -> None:
        self.values: dict[str, dict[int, tuple[int, int]]] = {"drops": {}, "job_stats": {}, "job_drops": {}}

    def read_counter(self, name: str, indices: Sequence[int] | None = None) -> dict[int, tuple[int, int]]:
        table = self.values[name]
        if indices is None:
            return dict(table)
        return {i: table.get(i, (0, 0)) for i in indices}


#: The job API credentials of the tests: two tenants.
TOKEN, OTHER_TOKEN = "token-of-tenant-a", "token-of-tenant-b"


class Service:
    def __init__(self, topology, lease: float | None = None, request_timeout: float = 30.0) -> None:
        self.recorder = Recorder()
        self.counters = Counters()
        self.generation = 1  # the switch's pipeline generation, as the switch layer would report it
        stats = StatsReader(self.counters)
        self.manager = JobManager(topology, self.recorder, lease_seconds=lease, on_admitted=stats.mark_start,
                                  switch_generation=lambda: self.generation)
        self.server = ApiServer(("127.0.0.1", 0), self.manager, stats.collect, request_timeout=request_timeout,
                                tenants=[Tenant("a", TOKEN), Tenant("b", OTHER_TOKEN)])
        self.server.start()
        self.address = self.server.url.removeprefix("http://")
        self.client = ControllerClient(self.address, timeout=5, token=TOKEN)
        self.other = ControllerClient(self.address, timeout=5, token=OTHER_TOKEN)  # another tenant

    def close(self) -> None:
        self.manager.stop_reaper()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service(topology) -> Iterator[Service]:
    svc = Service(topology)
    yield svc
    svc.close()


def join_ranks(client: ControllerClient, job: str, world_size: int, **kw: Any) -> list[Any]:
    results: list[Any] = [None] * world_size

    def run(rank: int) -> None:
        try:
            results[rank] = client.join(job, world_size=world_size, rank=rank, addr=f"10.0.0.{rank % 3 + 1}",
                                        port=6000 + rank, lanes=256, **kw)
        except ControllerClientError as ex:
            results[rank] = ex

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        tick.wait(0.02)


def test_concurrent_join_of_several_ranks(service: Service) -> None:
    results = join_ranks(service.client, "train", 5, slots=12)
    assert all(isinstance(r, JoinResult) for r in results), results
    assert [r.worker_id for r in results] == list(range(5))
    first = results[0]
    assert (first.job, first.job_id, first.world_size, first.lanes, first.slots) == ("train", 0, 5, 256, 12)
    assert first.epoch != 0 and {r.epoch for r in results} == {first.epoch}
    assert (first.switch.mac, first.switch.addr, first.switch.port) == ("02:00:00:00:00:fe", "10.0.0.254", 48864)
    assert service.recorder.calls == [("install", "train")]
    listing = service.client.jobs()
    assert listing["jobs"][0]["job"] == "train" and listing["jobs"][0]["state"] == "active"
    assert listing["pool"] == {"size": 64, "free": 52, "epochs_left": MAX_EPOCH - first.epoch}


def test_each_rank_gets_its_key_and_nothing_else_shows_keys(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    results = join_ranks(service.client, "train", 3)
    keys = [r.key for r in results]
    assert 0 not in keys and len(set(keys)) == 3
    assert keys == [w.key for w in service.manager.active_jobs()[0].workers]
    # Not in the listing, the statistics, the log, or the repr of a join result.
    shown = json.dumps(service.client.jobs()) + json.dumps(service.client.stats()) + caplog.text + repr(results)
    for key in keys:
        assert str(key) not in shown and f"{key:x}" not in shown and f"{key:#x}" not in shown
    assert '"key"' not in shown and "key=" not in shown


def test_errors_carry_type_and_message(service: Service) -> None:
    with pytest.raises(ControllerClientError) as info:
        service.client.join("j", world_size=2, rank=0, addr="192.168.1.1", port=1, lanes=64, timeout=1)
    assert (info.value.status, info.value.type) == (400, "UnknownHost")
    assert "'j'" in info.value.message and "192.168.1.1" in info.value.message

    with pytest.raises(ControllerClientError) as info:
        service.client.join("j", world_size=2, rank=2, addr="10.0.0.1", port=1, lanes=64)
    assert info.value.type == "RankOutOfRange" and "rank 2" in info.value.message

    with pytest.raises(ControllerClientError) as info:
        service.client.stats("nope")
    assert (info.value.status, info.value.type) == (404, "UnknownJob")


def test_malformed_requests(service: Service) -> None:
    def post(path: str, data: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(service.server.url + path, data=data, method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as ex:
            return ex.code, json.loads(ex.read())

    status, body = post("/v1/jobs/join", b"{not json")
    assert status == 400 and body["error"]["type"] == "BadRequest"
    status, body = post("/v1/jobs/join", json.dumps({"job": "j", "rank": "0"}).encode())
    assert status == 400 and "world_size" in body["error"]["message"]
    status, body = post("/v1/jobs/join", json.dumps({"job": "j", "world_size": 1, "rank": True, "addr": "10.0.0.1",
                                                     "port": 1, "lanes": 64}).encode())
    assert status == 400 and "'rank'" in body["error"]["message"]
    status, body = post("/v1/nothing", b"{}")
    assert status == 404 and body["error"]["type"] == "NoSuchRoute"


def test_deadline_then_retry(service: Service) -> None:
    with pytest.raises(ControllerClientError) as info:
        service.client.join("j", world_size=2, rank=0, addr="10.0.0.1", port=1, lanes=64, timeout=0.2)
    assert (info.value.status, info.value.type) == (408, "JoinTimeout")
    assert "missing: 1" in info.value.message
    assert service.client.jobs()["jobs"] == []
    results = join_ranks(service.client, "j", 2, timeout=10)
    assert all(isinstance(r, JoinResult) for r in results)


def test_leave_tears_down_and_later_calls_are_404(service: Service) -> None:
    join_ranks(service.client, "j", 2)
    assert service.client.leave("j", 0) == {"job": "j", "rank": 0, "remaining": 1, "torn_down": False}
    assert service.client.leave("j", 1)["torn_down"] is True
    assert service.recorder.calls[-1] == ("remove", "j")
    for call in (service.client.heartbeat, service.client.leave):
        with pytest.raises(ControllerClientError) as info:
            call("j", 0)
        assert info.value.status == 404 and "every rank left" in info.value.message


def test_silent_job_expires(topology) -> None:
    svc = Service(topology, lease=0.3)
    try:
        svc.manager.start_reaper()
        join_ranks(svc.client, "beating", 1)
        join_ranks(svc.client, "silent", 1)
        # Keep "beating" alive while waiting for "silent" to expire.
        def only_beating_left() -> bool:
            svc.client.heartbeat("beating", 0)
            return [j["job"] for j in svc.client.jobs()["jobs"]] == ["beating"]

        poll(only_beating_left)
        with pytest.raises(ControllerClientError) as info:
            svc.client.heartbeat("silent", 0)
        assert info.value.status == 404 and "rank 0 was silent" in info.value.message
        assert ("remove", "silent") in svc.recorder.calls and ("remove", "beating") not in svc.recorder.calls
    finally:
        svc.close()


def test_stats_per_job_and_switch(service: Service) -> None:
    counters = service.counters.values
    # Counts left on job id 0 by an earlier job must not show up for the new job.
    counters["job_stats"][0 * NUM_JOB_STATS + JobStat.AGGREGATED] = (100, 1000)
    join_ranks(service.client, "j", 2)
    counters["job_stats"][JobStat.AGGREGATED] = (108, 1800)
    counters["job_stats"][JobStat.COMPLETED] = (4, 400)
    counters["job_stats"][JobStat.RETRANSMIT_ANSWERED] = (1, 100)
    counters["job_drops"][DropReason.STALE] = (2, 200)
    counters["job_drops"][NUM_DROP_REASONS + DropReason.STALE] = (9, 900)  # job id 1: not ours
    counters["drops"][DropReason.UNKNOWN_WORKER] = (3, 300)
    stats = service.client.stats("j")
    job = stats["jobs"]["j"]
    assert job["aggregated"] == {"packets": 8, "bytes": 800}
    assert job["completed"]["packets"] == 4 and job["retransmit_answered"]["packets"] == 1
    assert job["drops"]["stale"] == {"packets": 2, "bytes": 200}
    assert sum(v["packets"] for v in job["drops"].values()) == 2
    assert stats["switch"]["drops"]["unknown_worker"]["packets"] == 3
    assert set(stats["switch"]["drops"]) == {r.name.lower() for r in DropReason}
    assert service.client.stats()["jobs"].keys() == {"j"}


def test_unreachable_controller_is_a_clear_error() -> None:
    client = ControllerClient("127.0.0.1:1", timeout=2, token=TOKEN)
    with pytest.raises(ControllerUnreachable, match="127.0.0.1:1"):
        client.jobs()


def test_many_jobs_join_at_once(service: Service) -> None:
    # 32 connections at once: the listen backlog must hold them all.
    outcomes: dict[str, list[Any]] = {}

    def job(name: str) -> None:
        outcomes[name] = join_ranks(service.client, name, 4, slots=4, timeout=20)

    threads = [threading.Thread(target=job, args=(f"job{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failures = [r for results in outcomes.values() for r in results if not isinstance(r, JoinResult)]
    assert not failures
    ids = {results[0].job_id for results in outcomes.values()}
    assert len(ids) == 8
    listing = {j["job"]: j for j in service.client.jobs()["jobs"]}
    ranges = sorted((j["pool_base"], j["pool_base"] + j["slots"]) for j in listing.values())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ranges))
    assert len(service.recorder.calls) == 8


# --- malformed and misbehaving clients -------------------------------------------------------------------------


def raw_request(service: Service, head: bytes, body: bytes = b"", *, linger_reset: bool = False) -> socket.socket:
    """Send bytes as they are on a new connection (no HTTP client fixes them up); the socket stays open."""
    sock = socket.create_connection(service.server.server_address[:2], timeout=10)
    if linger_reset:  # close() will reset the connection at once, as a killed client's does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(head + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one answer (blocks until the server answers: the socket has a timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"Content-Length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


JOIN = (b"POST /v1/jobs/join HTTP/1.1\r\nHost: controller\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n")


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_refused(service: Service, number: bytes) -> None:
    # A NaN deadline never passes: the partial job would never expire and would hold its id and slots.
    body = (b'{"job": "j", "world_size": 2, "rank": 0, "addr": "10.0.0.1", "port": 1, "lanes": 64, "timeout": '
            + number + b"}")
    with raw_request(service, JOIN + b"Content-Length: %d\r\n\r\n" % len(body), body) as sock:
        status, answer = read_answer(sock)
    assert status == 400 and answer["error"]["type"] == "BadRequest"
    assert "finite" in answer["error"]["message"]
    assert service.client.jobs()["jobs"] == []
    with pytest.raises(ValueError, match="finite"):
        service.client.join("j", world_size=2, rank=0, addr="10.0.0.1", port=1, lanes=64, timeout=float("nan"))


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b" ", b"99999999999999999999", b"9" * 5000])
def test_a_bad_content_length_is_400_at_once(service: Service, length: bytes,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # The client keeps its end open: the answer must not wait for it to leave (Content-Length -1 did).
    with raw_request(service, JOIN + b"Content-Length: " + length + b"\r\n\r\n") as sock:
        status, answer = read_answer(sock)
        assert status == 400 and answer["error"]["type"] == "BadRequest"
        assert sock.recv(1) == b""  # and the connection is closed: its unread bytes are not a next request
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_slow_request_times_out(topology) -> None:
    svc = Service(topology, request_timeout=0.3)
    try:
        # A body shorter than its Content-Length: the answer is 408, then the connection is closed.
        with raw_request(svc, JOIN + b"Content-Length: 100\r\n\r\n", b'{"job": ') as sock:
            status, answer = read_answer(sock)
            assert status == 408 and answer["error"]["type"] == "RequestTimeout"
            assert sock.recv(1) == b""
        # Half a request line, then nothing: the connection is closed, and the thread with it.
        with raw_request(svc, b"POST /v1/jo") as sock:
            assert sock.recv(1) == b""
        # The server still answers everyone else.
        assert svc.client.jobs()["jobs"] == []
    finally:
        svc.close()


def test_a_client_that_leaves_early_is_one_log_line(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = b'{"job": "j", "world_size": 2, "rank": 0, "addr": "10.0.0.1", "port": 6000, "lanes": 64}'
    sock = raw_request(service, JOIN + b"Content-Length: %d\r\n\r\n" % len(body), body, linger_reset=True)
    poll(lambda: service.manager.describe() != [] and service.manager.describe()[0]["joined"] == [0])
    sock.close()  # rank 0 gives up waiting; rank 1 then completes the job and rank 0's answer has nowhere to go
    assert isinstance(service.client.join("j", world_size=2, rank=1, addr="10.0.0.2", port=6001, lanes=64),
                      JoinResult)

    def closed() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "connection closed during POST /v1/jobs/join" in r.getMessage()]

    poll(lambda: closed() != [])
    (record,) = closed()
    assert record.levelno == logging.INFO and record.exc_info is None and "\n" not in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
