"""A hand-built ``SwitchState`` shaped like the P4Info contract, frame builders, and a check of both.

The software switch's pipeline tests need tables, groups and counters named as in docs/protocol.md. This module
builds them from the tests' statement of the contract (``p4info_contract``) without the softswitch's P4Info
schema (``contract_state``), and offers small helpers to fill them and to build frames; the tests below check
the helpers against the contract and against the state the schema builds from the committed program.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from p4info_contract import ACTIONS, COUNTERS, TABLES
from p4runtime_testlib import netagg_program

from netagg.constants import (
    AGG_UDP_PORT,
    FLOOD_MCAST_GROUP,
    JOB_MCAST_GROUP_BASE,
    LANE_BYTES,
    NUM_DROP_REASONS,
    NUM_JOB_STATS,
    DropReason,
    JobStat,
    MsgType,
)
from netagg.softswitch.pipeline import Pipeline
from netagg.softswitch.schema import P4Schema, defaults_from_bmv2_json
from netagg.softswitch.state import Action, CounterArray, SwitchState, Table
from netagg.wire import AGG_OFFSET, HEADER_BYTES, LANE_DTYPE, pack_header, size_for_lanes

pytestmark = pytest.mark.unit

AGG_MAC = 0x02_00_00_00_AA_01
AGG_IP = int(ipaddress.IPv4Address("10.0.0.254"))
SWITCH_PORTS = (1, 2, 3, 4)
#: The ``op`` every UPDATE carries unless a test gives another (not 0, so a RESULT that drops it shows).
OP = 0x5EED_0001


def contract_state() -> SwitchState:
    """An empty pipeline as the P4Info contract describes it (no entries, no groups)."""
    state = SwitchState()
    for name, table in TABLES.items():
        default = Action(table.default, dict(table.default_params))
        state.tables[name] = Table(name, tuple(k for k, _ in table.keys), default, default, 4096)
    for name, size in COUNTERS.items():
        state.counters[name] = CounterArray(name, size)
    state.bump()
    return state


@dataclass(frozen=True)
class Worker:
    """One worker as the controller would register it."""

    job: int
    worker_id: int
    ip: int
    udp_port: int
    mac: int
    port: int
    key: int


@dataclass(frozen=True)
class Job:
    """A job's admission parameters and its workers."""

    job: int
    workers: tuple[Worker, ...]
    pool_base: int
    pool_size: int
    size: int
    epoch: int


def make_job(
    job: int,
    num_workers: int,
    *,
    pool_base: int = 0,
    pool_size: int = 16,
    size: int = 0,
    epoch: int = 1,
    ports: tuple[int, ...] = SWITCH_PORTS,
) -> Job:
    """A job whose workers sit round-robin on ``ports`` at 10.<job>.0.<id+1>, UDP port 40000 + id.

    Every worker gets its own 32-bit key (most with the top bit set, so a key handled as a signed or shorter
    value shows).
    """
    workers = tuple(
        Worker(
            job=job,
            worker_id=i,
            ip=int(ipaddress.IPv4Address(f"10.{job}.0.{i + 1}")),
            udp_port=40000 + i,
            mac=0x02_00_00_00_00_00 | (job << 8) | (i + 1),
            port=ports[i % len(ports)],
            key=(0x9E37_79B9 * ((job << 8) | (i + 1))) & 0xFFFF_FFFF | 0x8000_0000,
        )
        for i in range(num_workers)
    )
    return Job(job, workers, pool_base, pool_size, size, epoch)


def install_job(state: SwitchState, job: Job) -> None:
    """Write the entries and the multicast group the controller writes for a job."""
    with state.lock:
        for w in job.workers:
            state.tables["workers"].entries[(job.job, w.ip, w.udp_port)] = Action(
                "set_worker",
                {
                    "worker_id": w.worker_id,
                    "num_workers": len(job.workers),
                    "pool_base": job.pool_base,
                    "pool_size": job.pool_size,
                    "size": job.size,
                    "epoch": job.epoch,
                    "port": w.port,
                    "key": w.key,
                },
            )
            state.tables["results"].entries[(job.job, w.worker_id)] = Action(
                "set_result_dst", {"mac": w.mac, "addr": w.ip, "port": w.udp_port, "key": w.key}
            )
        state.mcast_groups[JOB_MCAST_GROUP_BASE + job.job] = [(w.port, w.worker_id) for w in job.workers]
        state.bump()


def install_switch(state: SwitchState, ports: tuple[int, ...] = SWITCH_PORTS) -> None:
    """The switch-wide entries: aggregation address and the flood group."""
    with state.lock:
        state.tables["agg_addr"].default = Action("set_agg_addr", {"mac": AGG_MAC, "addr": AGG_IP})
        state.mcast_groups[FLOOD_MCAST_GROUP] = [(p, 0) for p in ports]
        state.bump()


def loaded_pipeline(*jobs: Job, seed: int = 1) -> tuple[SwitchState, Pipeline]:
    """A contract-shaped state with the switch entries and ``jobs`` installed, and a pipeline over it."""
    state = contract_state()
    install_switch(state)
    for job in jobs:
        install_job(state, job)
    return state, Pipeline(state, seed=seed)


def ipv4_checksum(header: bytes) -> int:
    """Reference IPv4 header checksum (over the header with its checksum field zeroed)."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    *,
    src_mac: int,
    dst_mac: int,
    src_ip: int,
    dst_ip: int,
    sport: int,
    dport: int,
    payload: bytes,
    udp_length: int | None = None,
) -> bytes:
    """An Ethernet/IPv4/UDP frame with a correct IPv4 checksum and UDP checksum 0."""
    ulen = 8 + len(payload) if udp_length is None else udp_length
    ip = bytearray(
        struct.pack("!BBHHHBBHII", 0x45, 0, 20 + 8 + len(payload), 7, 0x4000, 64, 17, 0, src_ip, dst_ip)
    )
    struct.pack_into("!H", ip, 10, ipv4_checksum(bytes(ip)))
    eth = dst_mac.to_bytes(6, "big") + src_mac.to_bytes(6, "big") + b"\x08\x00"
    return eth + bytes(ip) + struct.pack("!HHHH", sport, dport, ulen, 0) + payload


def update_payload(
    *,
    job: int,
    tsi: int,
    slot: int,
    set_: int,
    lanes: np.ndarray,
    exp: int = 0,
    flags: int = 0,
    key: int = 0,
    op: int = OP,
    msg_type: int = MsgType.UPDATE,
) -> bytes:
    """Aggregation header + big-endian lanes."""
    buf = bytearray(HEADER_BYTES + LANE_BYTES * len(lanes))
    pack_header(
        buf,
        0,
        msg_type=msg_type,
        size=size_for_lanes(len(lanes)),
        job=job,
        tsi=tsi,
        slot=slot,
        set=set_,
        exp=exp,
        flags=flags,
        key=key,
        op=op,
    )
    np.frombuffer(buf, dtype=LANE_DTYPE, offset=HEADER_BYTES)[:] = lanes
    return bytes(buf)


def update_frame(
    worker: Worker,
    *,
    tsi: int,
    slot: int,
    set_: int,
    lanes: np.ndarray,
    exp: int = 0,
    flags: int = 0,
    key: int | None = None,
    op: int = OP,
    msg_type: int = MsgType.UPDATE,
) -> bytes:
    """A worker's UPDATE frame to the switch's aggregation address (with the worker's own key by default)."""
    payload = update_payload(
        job=worker.job,
        tsi=tsi,
        slot=slot,
        set_=set_,
        lanes=lanes,
        exp=exp,
        flags=flags,
        key=worker.key if key is None else key,
        op=op,
        msg_type=msg_type,
    )
    return udp_frame(
        src_mac=worker.mac,
        dst_mac=AGG_MAC,
        src_ip=worker.ip,
        dst_ip=AGG_IP,
        sport=worker.udp_port,
        dport=AGG_UDP_PORT,
        payload=payload,
    )


def drops(state: SwitchState) -> dict[DropReason, int]:
    """Non-zero ``drops`` packet counts by reason."""
    packets = state.counters["drops"].packets
    return {r: int(packets[r]) for r in DropReason if packets[r]}


def job_drops(state: SwitchState, job: int) -> dict[DropReason, int]:
    packets = state.counters["job_drops"].packets
    return {
        r: int(packets[job * NUM_DROP_REASONS + r]) for r in DropReason if packets[job * NUM_DROP_REASONS + r]
    }


def job_stats(state: SwitchState, job: int) -> dict[JobStat, int]:
    packets = state.counters["job_stats"].packets
    return {s: int(packets[job * NUM_JOB_STATS + s]) for s in JobStat if packets[job * NUM_JOB_STATS + s]}


# ------------------------------------------------------------------------------------- checks of the helper


def test_helper_action_params_are_the_contract_ones() -> None:
    state = contract_state()
    job = make_job(3, 2)
    install_job(state, job)
    install_switch(state)
    used = {
        a.name: set(a.params)
        for t in state.tables.values()
        for a in [*t.entries.values(), t.default]
        if a.params
    }
    assert set(used) == {"set_worker", "set_result_dst", "set_agg_addr"}
    for action, names in used.items():
        assert names == {p for p, _ in ACTIONS[action]}, action
    assert AGG_OFFSET == 42


def test_helper_state_matches_the_state_the_schema_builds() -> None:
    """The hand-built state has the tables, keys, initial defaults and counters a pushed pipeline gets."""
    program = netagg_program()
    schema = P4Schema(program.p4info, defaults_from_bmv2_json(program.device_config, program.p4info))
    built, helper = schema.new_state(), contract_state()
    assert set(built.tables) == set(helper.tables)
    for name, table in helper.tables.items():
        assert built.tables[name].key_names == table.key_names, name
        assert built.tables[name].initial_default == table.initial_default, name
    assert {n: c.size for n, c in built.counters.items()} == {n: c.size for n, c in helper.counters.items()}
