"""The data path programmed over P4Runtime: server, pipeline and UDP ports together, workers on loopback."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from p4runtime_testlib import DEVICE_ID, Client, insert, modify, netagg_program

from netagg.constants import (
    JOB_MCAST_GROUP_BASE,
    LANE_BYTES,
    NUM_DROP_REASONS,
    NUM_JOB_STATS,
    DropReason,
    JobStat,
    MsgType,
)
from netagg.softswitch.p4runtime_server import P4RuntimeServer
from netagg.softswitch.pipeline import Pipeline
from netagg.softswitch.ports import UDP_PORT_NUMBER, UdpPorts
from netagg.softswitch.state import SwitchState
from netagg.softswitch.switch import SoftSwitch
from netagg.wire import AGG_OFFSET, HEADER_BYTES, AggHeader, decode, encode

pytestmark = pytest.mark.loopback

TIMEOUT_S = 10.0
AGG_MAC = 0x02_00_00_00_00_FE
AGG_IP = int(ipaddress.IPv4Address("10.0.0.254"))
LOCALHOST = int(ipaddress.IPv4Address("127.0.0.1"))
JOB = 6


@pytest.fixture
def rig() -> Iterator[tuple[SoftSwitch, Client]]:
    program = netagg_program()
    state = SwitchState()
    pipeline = Pipeline(state, seed=1)
    server = P4RuntimeServer(
        state, pipeline, DEVICE_ID, "127.0.0.1:0",
        reference_p4info=program.p4info_path, reference_bmv2_json=program.bmv2_json_path,
    )  # fmt: skip
    switch = SoftSwitch(pipeline, UdpPorts(("127.0.0.1", 0), pipeline.agg_source), server)
    with switch:
        client = Client(server.bound_address, program)
        try:
            client.become_primary()
            client.push(program.config())
            yield switch, client
        finally:
            client.close()


def admit(client: Client, sockets: list[socket.socket], *, epoch: int, size: int = 1) -> None:
    """What the controller writes for a job whose workers are ``sockets``, in UDP mode (all on port 1)."""
    updates = [
        modify(client.table_entry("agg_addr", (), "set_agg_addr", default=True, mac=AGG_MAC, addr=AGG_IP)),
        insert(
            client.group_entry(
                JOB_MCAST_GROUP_BASE + JOB, [(UDP_PORT_NUMBER, i) for i in range(len(sockets))]
            )
        ),
    ]
    for i, s in enumerate(sockets):
        port = s.getsockname()[1]
        updates.append(insert(client.table_entry(
            "workers", (JOB, LOCALHOST, port), "set_worker", worker_id=i, num_workers=len(sockets), pool_base=16,
            pool_size=4, size=size, epoch=epoch, port=UDP_PORT_NUMBER, key=key_of(i),
        )))  # fmt: skip
        updates.append(insert(client.table_entry(
            "results", (JOB, i), "set_result_dst", mac=0x020000000001 + i, addr=LOCALHOST, port=port, key=key_of(i),
        )))  # fmt: skip
    client.write(*updates)


def counter(client: Client, name: str, index: int) -> int:
    (entity,) = client.read(client.counter_entry(name, index))
    return entity.counter_entry.data.packet_count


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it holds; fail after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def key_of(worker_id: int) -> int:
    """The key the tests admit worker ``worker_id`` with (the top bit set: a full 32-bit value)."""
    return 0x8BAD_F00D ^ worker_id


def update(tsi: int, values: np.ndarray, exp: int = 0, worker_id: int = 0) -> bytes:
    header = AggHeader(MsgType.UPDATE, 1, JOB, tsi, tsi % 4, (tsi // 4) % 2, exp, 0, key_of(worker_id), op=77)
    return encode(header, values)


def test_workers_aggregate_through_a_switch_programmed_over_p4runtime(rig: tuple[SoftSwitch, Client]) -> None:
    switch, client = rig
    address = switch.ports.address  # type: ignore[attr-defined]
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
            s.settimeout(TIMEOUT_S)
        admit(client, sockets, epoch=7)
        rng = np.random.default_rng(5)
        for tsi in range(12):
            values = [rng.integers(-(2**20), 2**20, size=64).astype(np.int32) for _ in sockets]
            for i, (s, v) in enumerate(zip(sockets, values)):
                s.sendto(update(tsi, v, exp=i - 1, worker_id=i), address)
            for i, s in enumerate(sockets):
                header, lanes = decode(s.recv(4096))
                assert (header.msg_type, header.tsi, header.exp) == (MsgType.RESULT, tsi, 1)
                assert (header.key, header.op) == (key_of(i), 77)
                np.testing.assert_array_equal(lanes, np.sum(values, axis=0))
        assert counter(client, "job_stats", JOB * NUM_JOB_STATS + JobStat.COMPLETED) == 12
        assert counter(client, "job_stats", JOB * NUM_JOB_STATS + JobStat.AGGREGATED) == 36

        # A retransmission after completion is answered from the registers ...
        sockets[1].sendto(update(11, np.zeros(64, np.int32), worker_id=1), address)
        header, lanes = decode(sockets[1].recv(4096))
        assert header.tsi == 11 and lanes.any()
        # ... until a pipeline push, which zeroes them and clears every table: the switch drops everything.
        client.push(client.program.config())
        assert not switch.pipeline.registers.lanes.any()
        sockets[1].sendto(update(11, np.zeros(64, np.int32)), address)
        unknown = JOB * NUM_DROP_REASONS + DropReason.UNKNOWN_WORKER
        wait_for(lambda: counter(client, "job_drops", unknown) == 1, "the UPDATE to be dropped (no workers)")
        admit(client, sockets, epoch=8)  # re-admission after the push
        sockets[0].sendto(update(0, np.ones(64, np.int32)), address)
        aggregated = JOB * NUM_JOB_STATS + JobStat.AGGREGATED
        wait_for(lambda: counter(client, "job_stats", aggregated) == 1, "the UPDATE to be aggregated")
    finally:
        for s in sockets:
            s.close()


def test_counters_read_over_p4runtime_match_the_pipeline(rig: tuple[SoftSwitch, Client]) -> None:
    switch, client = rig
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(update(0, np.zeros(64, np.int32)), switch.ports.address)  # type: ignore[attr-defined]
        wait_for(lambda: counter(client, "drops", DropReason.UNKNOWN_WORKER) == 1, "the drop to be counted")
    entity = client.read(client.counter_entry("drops", DropReason.UNKNOWN_WORKER))[0]
    assert entity.counter_entry.data.byte_count == AGG_OFFSET + HEADER_BYTES + LANE_BYTES * 64
