"""Admission and teardown against a real P4Runtime switch, checked by reading its tables back.

Point ``NETAGG_P4RUNTIME_ADDR`` (host:port; device id from ``NETAGG_P4RUNTIME_DEVICE_ID``, default 1) at a running
``netagg-softswitch`` or ``simple_switch_grpc`` that may be reprogrammed; the test pushes the committed pipeline.
Without the variable the in-process fake P4Runtime server stands in, so the test always runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from netagg.constants import NUM_JOB_STATS, JobStat
from netagg.controller.jobs import JobManager, JoinRequest
from netagg.controller.switch import SwitchConnection

pytestmark = pytest.mark.loopback

ADDRESS = os.environ.get("NETAGG_P4RUNTIME_ADDR")
DEVICE_ID = int(os.environ.get("NETAGG_P4RUNTIME_DEVICE_ID", "1"))


@pytest.fixture
def connection(make_topo, pipeline, committed_pipeline, fake_switch_class) -> Iterator[SwitchConnection]:
    fake = None
    if ADDRESS is None:
        fake = fake_switch_class()
        address = fake.address
    else:  # a real switch compiles what it is given: the committed program
        address, pipeline = ADDRESS, committed_pipeline
    conn = SwitchConnection(make_topo(address, device_id=DEVICE_ID), *pipeline)
    try:
        conn.start(timeout=20)
        yield conn
    finally:
        conn.stop()
        if fake is not None:
            fake.stop()


def by_key(entries: list, *names: str) -> dict[tuple[int, ...], dict[str, int]]:
    out = {}
    for e in entries:
        key = tuple(int(e.match[n]) if not isinstance(e.match[n], int) else e.match[n] for n in names)
        out[key] = {k: int(v) for k, v in e.action.args.items()}
    return out


def test_job_entries_round_trip(connection: SwitchConnection) -> None:
    assert len(connection.read_table("l2_forward")) == 3
    manager = JobManager(connection.topology, connection)
    admissions = {}

    def join(rank: int) -> None:
        admissions[rank] = manager.join(JoinRequest("rt", 2, rank, f"10.0.0.{rank + 1}", 9000 + rank, lanes=64,
                                                    slots=4, timeout=20))

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    job = admissions[0].job
    workers = by_key(connection.read_table("workers"), "job", "src_addr", "src_port")
    assert workers == {
        (job.job_id, 0x0A000001 + r, 9000 + r): {"worker_id": r, "num_workers": 2, "pool_base": job.pool.base,
                                                  "pool_size": 4, "size": 1, "epoch": job.epoch, "port": r + 1,
                                                  "key": job.workers[r].key}
        for r in range(2)
    }
    results = by_key(connection.read_table("results"), "job", "worker_id")
    assert results[(job.job_id, 1)] == {"mac": 0x020000000002, "addr": 0x0A000002, "port": 9001,
                                        "key": job.workers[1].key}
    indices = [job.job_id * NUM_JOB_STATS + stat for stat in JobStat]
    assert connection.read_counter("job_stats", indices) == {i: (0, 0) for i in indices}  # no traffic yet
    manager.leave("rt", 0)
    manager.leave("rt", 1)
    assert connection.read_table("workers") == [] and connection.read_table("results") == []
