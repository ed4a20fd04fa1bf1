"""The compiled data path against the reference pipeline, frame by frame.

Both pipelines get the same state (tables, groups, drop simulator seed) and the same seeded random sequences of
legal and illegal frames: UPDATEs of three jobs over a few slots with tsi near each copy's current round (new
rounds, adds, duplicates, retransmissions, stale and long-delayed copies), aborts and other flags, mismatched ops,
wrong versions, message types, reserved bits, sizes, lengths, keys and sources, slots out of range, truncations,
trailing bytes, ARP and other L2 traffic, with and without the drop simulator, with control-plane writes in
between. Every output frame (port and bytes), every counter and every register must be identical. The native side
also runs the sequences as bursts of random length into a small output buffer, so it stops and resumes in the
middle of bursts.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from test_pipeline_contract import (
    AGG_IP,
    AGG_MAC,
    contract_state,
    install_job,
    install_switch,
    make_job,
    udp_frame,
    update_frame,
)

from netagg.constants import AGG_UDP_PORT, NUM_JOB_STATS, DropReason, Flag, JobStat, MsgType
from netagg.softswitch import _native
from netagg.softswitch.native_pipeline import NativePipeline, make_pipeline
from netagg.softswitch.pipeline import Burst, OutBurst, Output, Pipeline
from netagg.softswitch.state import Action, SwitchState
from netagg.wire import (
    AGG_OFFSET,
    ETH_HEADER_BYTES,
    HEADER_BYTES,
    HEADER_FIELDS,
    IPV4_HEADER_BYTES,
    UDP_HEADER_BYTES,
)

pytestmark = pytest.mark.unit

JOBS = (
    make_job(1, 3, size=0, pool_size=4, epoch=2),
    make_job(2, 2, size=1, pool_base=4, pool_size=4, epoch=3),
    make_job(3, 5, size=3, pool_base=1020, pool_size=8, epoch=4),  # its pool runs past the registers
)
ARP_TARGET = 0x0A00_00FE


def build(seed: int, loss: bool) -> tuple[SwitchState, Pipeline, SwitchState, NativePipeline]:
    pipelines = []
    for _ in range(2):
        state = contract_state()
        install_switch(state)
        for job in JOBS:
            install_job(state, job)
        with state.lock:
            state.tables["arp_reply"].entries[(ARP_TARGET,)] = Action("reply_arp", {"mac": AGG_MAC})
            state.tables["l2_forward"].entries[(0x02_00_00_00_00_77,)] = Action("forward", {"port": 3})
            if loss:
                state.tables["ingress_loss"].entries[(2,)] = Action("set_loss", {"threshold": 1 << 30})
                state.tables["egress_loss"].default = Action("set_loss", {"threshold": 1 << 29})
            state.bump()
        pipelines.append(state)
    ref_state, nat_state = pipelines
    return ref_state, Pipeline(ref_state, seed=seed), nat_state, NativePipeline(nat_state, seed=seed)


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One illegal edit of a legal UPDATE."""
    b = bytearray(frame)
    kind = rng.randrange(14)
    if kind == 0:
        b[AGG_OFFSET] = (b[AGG_OFFSET] & 0x3F) | rng.choice((0, 1, 3)) << 6  # version
    elif kind == 1:
        b[AGG_OFFSET] |= rng.choice((0x10, 0x20, 0x30))  # msg type
    elif kind == 2:
        b[AGG_OFFSET] |= 0x08  # reserved
    elif kind == 3:
        b[AGG_OFFSET + 9] |= rng.choice((0x08, 0x80))  # undefined flag
    elif kind == 4:
        b[AGG_OFFSET] = (b[AGG_OFFSET] & 0xF8) | rng.randrange(8)  # size code
    elif kind == 5:
        struct.pack_into("!H", b, AGG_OFFSET - 4, rng.randrange(0x10000))  # UDP length
    elif kind == 6:
        struct.pack_into("!I", b, AGG_OFFSET + 10, rng.getrandbits(32))  # key
    elif kind == 7:
        struct.pack_into("!H", b, AGG_OFFSET - 8, rng.randrange(0x10000))  # source port
    elif kind == 8:
        struct.pack_into("!H", b, AGG_OFFSET + 6, rng.randrange(0x10000))  # set/slot
    elif kind == 9:
        b = b[: rng.randrange(len(b))]  # truncated anywhere
    elif kind == 10:
        b += rng.randbytes(rng.randrange(1, 40))  # trailing bytes ride along
    elif kind == 11:
        b[AGG_OFFSET + 1] = rng.randrange(256)  # job
    elif kind == 12:
        b[rng.randrange(len(b))] = rng.randrange(256)  # any byte
    else:
        b[ETH_HEADER_BYTES] = rng.choice((0x46, 0x55))  # IPv4 options or version: not aggregation traffic
    return bytes(b)


def other_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # ARP request, for the switch's address or another
        target = rng.choice((ARP_TARGET, ARP_TARGET + 1))
        target_bytes = target.to_bytes(4, "big")
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes(6), b"\x0a\0\0\1", bytes(6), target_bytes)
        return b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x08\x06" + arp
    if kind == 1:  # known unicast and unknown (flooded)
        dst = rng.choice((0x02_00_00_00_00_77, 0x02_00_00_00_00_78))
        return dst.to_bytes(6, "big") + bytes(6) + b"\x88\xb5" + rng.randbytes(rng.randrange(0, 80))
    if kind == 2:  # UDP to another port
        return udp_frame(src_mac=2, dst_mac=AGG_MAC, src_ip=1, dst_ip=AGG_IP, sport=1, dport=AGG_UDP_PORT + 1,
                         payload=rng.randbytes(30))
    return rng.randbytes(rng.randrange(0, 100))


def frames(seed: int, count: int) -> list[tuple[bytes, int]]:
    """A seeded sequence of (frame, ingress port)."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    # Per slot: the round the workers are on (round r uses set r % 2) and who has sent in it; most frames
    # follow the protocol, the others are duplicates, retransmissions, delayed copies of older rounds or rare
    # far-future tsi that open a round no one else joins.
    current = {(j.job, s): [0, set()] for j in JOBS for s in range(j.pool_size + 1)}
    out = []
    for _ in range(count):
        job = rng.choice(JOBS)
        slot = rng.randrange(job.pool_size + 1) if rng.random() < 0.1 else rng.randrange(min(job.pool_size, 4))
        state = current[(job.job, slot)]
        waiting = [w for w in job.workers if w.worker_id not in state[1]]
        roll = rng.random()
        if waiting and rng.random() < 0.8:
            w = rng.choice(waiting)
            tsi = state[0]
            if roll >= 0.32:  # arrives intact (below: an illegal edit or other traffic instead)
                state[1].add(w.worker_id)
                if len(state[1]) == len(job.workers):
                    state[0] += 1
                    state[1] = set()
        else:
            w = rng.choice(job.workers)
            if rng.random() < 0.005:
                tsi = (state[0] + rng.choice((1 << 31, (1 << 31) - 1))) & 0xFFFF_FFFF
            else:
                tsi = max(0, state[0] + rng.choice((0, -1, -2, -3, 1)))
        set_ = tsi % 2 if rng.random() < 0.97 else 1 - tsi % 2
        flags = rng.choice((0, 0, 0, int(Flag.ABORT), int(Flag.NONFINITE), int(Flag.MISMATCH)))
        op = rng.choice((0x5EED_0001, 0x5EED_0001, 0x5EED_0001, 7))
        lanes = np_rng.integers(-(2**31), 2**31, size=32 << job.size, dtype=np.int64).astype(np.int32)
        frame = update_frame(w, tsi=tsi, slot=slot, set_=set_, lanes=lanes, exp=rng.randrange(-128, 128),
                             flags=flags, op=op)  # fmt: skip
        if roll < 0.25:
            frame = mutate(frame, rng)
        elif roll < 0.32:
            frame = other_frame(rng)
        out.append((frame, rng.choice((1, 2, 3, 4))))
    return out


def assert_same_state(ref: SwitchState, ref_p: Pipeline, nat: SwitchState, nat_p: Pipeline) -> None:
    for name, counter in ref.counters.items():
        np.testing.assert_array_equal(nat.counters[name].packets, counter.packets, err_msg=name)
        np.testing.assert_array_equal(nat.counters[name].bytes, counter.bytes, err_msg=name)
    for name in ("epoch", "bitmap", "count", "tsi", "exp", "flags", "op", "lanes"):
        np.testing.assert_array_equal(getattr(nat_p.registers, name), getattr(ref_p.registers, name), err_msg=name)
    assert nat_p.internal_errors == ref_p.internal_errors == 0


def control_write(step: int, *states: SwitchState) -> None:
    """The same control-plane change on every state: a job leaves, comes back with a new epoch, a loss changes."""
    for state in states:
        with state.lock:
            if step % 3 == 0:
                for key in [k for k in state.tables["workers"].entries if k[0] == 2]:
                    del state.tables["workers"].entries[key]
            elif step % 3 == 1:
                job = JOBS[1]
                install_job(state, make_job(job.job, 2, size=job.size, pool_base=4, pool_size=4, epoch=10 + step))
            else:
                state.tables["ingress_loss"].entries[(3,)] = Action("set_loss", {"threshold": step << 24})
            state.bump()


@pytest.mark.parametrize("loss", [False, True], ids=["no-loss", "loss"])
@pytest.mark.parametrize("seed", range(4))
def test_frame_by_frame_identical(seed: int, loss: bool) -> None:
    ref, ref_p, nat, nat_p = build(seed, loss)
    sequence = frames(seed, 3000)
    for i, (frame, port) in enumerate(sequence):
        if i % 700 == 699:
            control_write(i // 700, ref, nat)
        expected = ref_p.process(frame, port)
        got = nat_p.process(frame, port)
        assert got == expected, f"frame {i}"
    assert_same_state(ref, ref_p, nat, nat_p)
    stats = ref.counters["job_stats"].packets.reshape(-1, NUM_JOB_STATS).sum(axis=0)
    assert stats[JobStat.AGGREGATED] > 50 and stats[JobStat.COMPLETED] > 5 and stats[JobStat.RETRANSMIT_ANSWERED] > 0
    reasons = {DropReason(r) for r in np.flatnonzero(ref.counters["drops"].packets)}
    assert reasons >= set(DropReason) - {DropReason.INTERNAL_ERROR, DropReason.SIMULATED_LOSS}, reasons


@pytest.mark.parametrize("loss", [False, True], ids=["no-loss", "loss"])
@pytest.mark.parametrize("seed", range(3))
def test_bursts_identical_to_frame_by_frame(seed: int, loss: bool) -> None:
    ref, ref_p, nat, nat_p = build(seed, loss)
    sequence = frames(100 + seed, 3000)
    rng = random.Random(seed)
    expected: list[Output] = []
    for frame, port in sequence:
        expected += ref_p.process(frame, port)
    got: list[Output] = []
    burst = Burst(64, 64 * 1200)
    out = OutBurst(7, 7 * 1100)  # smaller than one 256-lane multicast of 5 copies: forces every resume path

    def flush(full: OutBurst) -> None:
        got.extend(full.frames())
        got.extend(full.oversize)
        full.clear()

    i = 0
    while i < len(sequence):
        burst.clear()
        for frame, port in sequence[i : i + rng.randrange(1, 64)]:
            assert burst.append(port, frame)
        i += burst.count
        nat_p.process_burst(burst, out, flush)
        flush(out)
    assert got == expected
    assert_same_state(ref, ref_p, nat, nat_p)


def test_no_pipeline_loaded_drops_everything() -> None:
    state = SwitchState()
    pipeline = NativePipeline(state)
    frame, port = frames(1, 1)[0]
    assert pipeline.process(frame, port) == []


def test_an_error_in_the_kernel_is_an_internal_error_not_a_crash() -> None:
    ref, ref_p, nat, nat_p = build(1, False)
    w = JOBS[0].workers[0]
    good = update_frame(w, tsi=1, slot=0, set_=0, lanes=np.arange(32, dtype=np.int32))

    class Broken:
        def run(self, *args: object) -> tuple[int, ...]:
            raise ValueError("kernel bug")

        def bind(self, *args: object) -> None:
            pass

    kernel, nat_p._kernel = nat_p._kernel, Broken()
    assert nat_p.process(good, 1) == []
    assert nat_p.internal_errors == 1
    assert int(nat.counters["drops"].packets[DropReason.INTERNAL_ERROR]) == 1
    nat_p._kernel = kernel
    assert nat_p.process(good, 1) == [] and int(nat.counters["job_stats"].packets.sum()) == 1  # serving again


def test_kernel_layout_is_the_wire_module_layout() -> None:
    layout = _native.LAYOUT
    assert layout["ip"] == ETH_HEADER_BYTES
    assert layout["udp"] == ETH_HEADER_BYTES + IPV4_HEADER_BYTES
    assert layout["agg"] == AGG_OFFSET == ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES
    assert layout["header_bytes"] == HEADER_BYTES
    assert layout["lanes"] == AGG_OFFSET + HEADER_BYTES
    bit = 0
    starts = {}
    for name, width in HEADER_FIELDS:
        starts.setdefault(name, bit)
        bit += width
    for name, field in (("job", "job"), ("tsi", "tsi"), ("pool_index", "set"), ("exp", "exp"),
                        ("flags", "flags"), ("key", "key"), ("op", "op")):  # fmt: skip
        assert layout[name] * 8 == starts[field], name


def test_datapath_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETAGG_DATAPATH", raising=False)
    assert type(make_pipeline(SwitchState())) is NativePipeline
    monkeypatch.setenv("NETAGG_DATAPATH", "python")
    assert type(make_pipeline(SwitchState())) is Pipeline
    monkeypatch.setenv("NETAGG_DATAPATH", "fast")
    with pytest.raises(ValueError, match="NETAGG_DATAPATH='fast': choose one of native, python"):
        make_pipeline(SwitchState())
    assert int(MsgType.RESULT) == 1
