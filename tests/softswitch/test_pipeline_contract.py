"""A hand-built ``SwitchState`` shaped like the P4Info contract, frame builders, and a check of both.

The software switch's pipeline tests need tables, groups and counters named as in docs/protocol.md. This module
builds them by hand from the contract table (``contract_state``) and offers small helpers to fill them and to
build frames; the tests below check the helper against the table in docs/protocol.md so the two cannot drift.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from netagg.constants import (
    AGG_UDP_PORT,
    FLOOD_MCAST_GROUP,
    JOB_MCAST_GROUP_BASE,
    MAX_JOBS,
    NUM_DROP_REASONS,
    NUM_JOB_STATS,
    DropReason,
    JobStat,
    MsgType,
)
from netagg.softswitch.pipeline import Pipeline
from netagg.softswitch.state import Action, CounterArray, SwitchState, Table
from netagg.wire import AGG_OFFSET, HEADER_BYTES, LANE_DTYPE, pack_header

pytestmark = pytest.mark.unit

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

NO_ACTION = Action("NoAction")

#: table name -> (key field names, initial default action), per docs/protocol.md.
CONTRACT_TABLES: dict[str, tuple[tuple[str, ...], Action]] = {
    "workers": (("job", "src_addr", "src_port"), NO_ACTION),
    "results": (("job", "worker_id"), NO_ACTION),
    "agg_addr": ((), Action("set_agg_addr", {"mac": 0, "addr": 0})),  # the P4 program's default
    "l2_forward": (("dst_addr",), Action("flood")),
    "arp_reply": (("target_addr",), NO_ACTION),
    "ingress_loss": (("port",), NO_ACTION),
    "egress_loss": (("port",), NO_ACTION),
}
CONTRACT_COUNTERS = {
    "drops": NUM_DROP_REASONS,
    "job_drops": MAX_JOBS * NUM_DROP_REASONS,
    "job_stats": MAX_JOBS * NUM_JOB_STATS,
}

AGG_MAC = 0x02_00_00_00_AA_01
AGG_IP = int(ipaddress.IPv4Address("10.0.0.254"))
SWITCH_PORTS = (1, 2, 3, 4)


def contract_state() -> SwitchState:
    """An empty pipeline as the P4Info contract describes it (no entries, no groups)."""
    state = SwitchState()
    for name, (keys, default) in CONTRACT_TABLES.items():
        state.tables[name] = Table(name, keys, default, default, 4096)
    for name, size in CONTRACT_COUNTERS.items():
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
    """A job whose workers sit round-robin on ``ports`` at 10.<job>.0.<id+1>, UDP port 40000 + id."""
    workers = tuple(
        Worker(
            job=job,
            worker_id=i,
            ip=int(ipaddress.IPv4Address(f"10.{job}.0.{i + 1}")),
            udp_port=40000 + i,
            mac=0x02_00_00_00_00_00 | (job << 8) | (i + 1),
            port=ports[i % len(ports)],
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
                },
            )
            state.tables["results"].entries[(job.job, w.worker_id)] = Action(
                "set_result_dst", {"mac": w.mac, "addr": w.ip, "port": w.udp_port}
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
    msg_type: int = MsgType.UPDATE,
) -> bytes:
    """Aggregation header + big-endian lanes."""
    size = {32: 0, 64: 1, 128: 2, 256: 3}[len(lanes)]
    buf = bytearray(HEADER_BYTES + 4 * len(lanes))
    pack_header(
        buf, 0, msg_type=msg_type, size=size, job=job, tsi=tsi, slot=slot, set=set_, exp=exp, flags=flags
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
    msg_type: int = MsgType.UPDATE,
) -> bytes:
    """A worker's UPDATE frame to the switch's aggregation address."""
    payload = update_payload(
        job=worker.job, tsi=tsi, slot=slot, set_=set_, lanes=lanes, exp=exp, flags=flags, msg_type=msg_type
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


def _contract_rows() -> list[list[str]]:
    text = PROTOCOL_MD.read_text()
    section = text.split("## P4Info names", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # skip the header row


def test_helper_tables_match_the_contract() -> None:
    rows = _contract_rows()
    documented = {}
    for kind, name, keys in rows:
        if kind.startswith("table"):
            table = name.strip("`")
            documented[table] = tuple(re.findall(r"`(\w+)` exact", keys))
    assert documented == {name: keys for name, (keys, _) in CONTRACT_TABLES.items()}


def test_helper_counters_match_the_contract() -> None:
    sizes = {"NUM_DROP_REASONS": NUM_DROP_REASONS, "MAX_JOBS * NUM_DROP_REASONS": MAX_JOBS * NUM_DROP_REASONS}
    sizes["MAX_JOBS * NUM_JOB_STATS"] = MAX_JOBS * NUM_JOB_STATS
    documented = {}
    for kind, name, keys in _contract_rows():
        if kind == "counter":
            documented[name.strip("`")] = sizes[re.search(r"size `([^`]+)`", keys).group(1)]
    assert documented == CONTRACT_COUNTERS


def test_helper_action_params_are_the_documented_ones() -> None:
    params = {}
    for _kind, _name, spec in _contract_rows():
        for action, args in re.findall(r"`?(\w+)\(([^)]*)\)", spec):
            params[action] = {a.split()[0] for a in args.split(",") if a.strip()}
    for kind, name, spec in _contract_rows():
        if kind == "action":
            params[name.strip("`")] = set(re.findall(r"`(\w+)` \d+", spec))
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
    for action, names in used.items():
        assert names == params[action], action
    assert AGG_OFFSET == 42


def test_helper_state_matches_the_state_the_schema_builds(tmp_path: Path) -> None:
    """The hand-built state has the tables, keys, initial defaults and counters a pushed pipeline gets."""
    from p4runtime_testlib import netagg_program

    from netagg.softswitch.schema import P4Schema, defaults_from_bmv2_json

    program = netagg_program(tmp_path)  # the committed program once compiled, else the contract P4Info
    schema = P4Schema(program.p4info, defaults_from_bmv2_json(program.device_config, program.p4info))
    built, helper = schema.new_state(), contract_state()
    for name, table in helper.tables.items():
        assert built.tables[name].key_names == table.key_names, name
        assert built.tables[name].initial_default == table.initial_default, name
    assert {n: c.size for n, c in built.counters.items()} == CONTRACT_COUNTERS
