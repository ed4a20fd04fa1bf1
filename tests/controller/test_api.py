"""The job API over HTTP on 127.0.0.1, through the Python client (no switch: a recording programmer)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from netagg.constants import NUM_DROP_REASONS, NUM_JOB_STATS, DropReason, JobStat
from netagg.controller.api import ApiServer
from netagg.controller.client import ControllerClient, ControllerClientError, ControllerUnreachable, JoinResult
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


class Service:
    def __init__(self, topology, lease: float | None = None) -> None:
        self.recorder = Recorder()
        self.counters = Counters()
        stats = StatsReader(self.counters)
        self.manager = JobManager(topology, self.recorder, lease_seconds=lease, on_admitted=stats.mark_start)
        self.server = ApiServer(("127.0.0.1", 0), self.manager, stats.collect)
        self.server.start()
        self.client = ControllerClient(self.server.url.removeprefix("http://"), timeout=5)

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
    assert listing["pool"] == {"size": 64, "free": 52}


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
        request = urllib.request.Request(service.server.url + path, data=data, method="POST")
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
    client = ControllerClient("127.0.0.1:1", timeout=2)
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
