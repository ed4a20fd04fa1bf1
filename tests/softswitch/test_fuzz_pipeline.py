"""Fuzzing the pipeline: no input of any length may raise, and every frame is accounted for exactly once.

Inputs (hypothesis, fixed database-less runs): 2,000 frames of random bytes (0-1,600 long), 2,000 frames with a
valid Ethernet/IPv4/UDP prefix to the aggregation port and random bytes after it, and 2,000 valid UPDATEs
(32, 64 and 256 lanes, three jobs) with random byte edits, truncations and extensions.

Per frame, exactly one of these holds: one drop is counted, one UPDATE is aggregated, one retransmission is
answered, or the frame was ordinary traffic (no counter moved and every output is a copy of the input).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pipeline_contract import loaded_pipeline, make_job, udp_frame, update_frame

from netagg.constants import AGG_UDP_PORT, JobStat
from netagg.softswitch.pipeline import Pipeline
from netagg.softswitch.state import SwitchState

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

JOBS = (
    make_job(1, 3, size=0, pool_size=8, epoch=2),
    make_job(2, 2, size=1, pool_base=8, pool_size=8, epoch=3),
    make_job(3, 32, size=3, pool_base=16, pool_size=4, epoch=4),
)
_RNG = np.random.default_rng(7)
VALID_UPDATES = [
    update_frame(
        w,
        tsi=t,
        slot=t % job.pool_size,
        set_=t % 2,
        lanes=_RNG.integers(-1000, 1000, size=32 << job.size).astype(np.int32),
        exp=int(_RNG.integers(-128, 128)),
    )
    for job in JOBS
    for w in job.workers[:3]
    for t in range(3)
]


def _totals(state: SwitchState) -> tuple[int, int, int]:
    stats = state.counters["job_stats"].packets.reshape(-1, 4)
    drops = int(state.counters["drops"].packets.sum())
    return drops, int(stats[:, JobStat.AGGREGATED].sum()), int(stats[:, JobStat.RETRANSMIT_ANSWERED].sum())


def check_one(state: SwitchState, pipeline: Pipeline, frame: bytes, port: int) -> None:
    before = _totals(state)
    outputs = pipeline.process(frame, port)
    after = _totals(state)
    delta = [a - b for a, b in zip(after, before)]
    assert pipeline.internal_errors == 0
    assert all(isinstance(p, int) and isinstance(f, bytes) for p, f in outputs)
    if delta == [0, 0, 0]:
        assert all(f == frame for _, f in outputs), "ordinary traffic leaves the switch unchanged"
    else:
        assert sorted(delta) == [0, 0, 1], delta
    job_drops = int(state.counters["job_drops"].packets.sum())
    assert job_drops <= after[0]


@pytest.fixture(scope="module")
def switch() -> tuple[SwitchState, Pipeline]:
    return loaded_pipeline(*JOBS, seed=5)


@FUZZ
@given(frame=st.binary(min_size=0, max_size=1600), port=st.integers(0, 511))
def test_random_frames(switch: tuple[SwitchState, Pipeline], frame: bytes, port: int) -> None:
    check_one(*switch, frame, port)


@FUZZ
@given(
    tail=st.binary(min_size=0, max_size=1100), port=st.integers(1, 4), src=st.sampled_from(JOBS[2].workers)
)
def test_random_aggregation_payloads(
    switch: tuple[SwitchState, Pipeline], tail: bytes, port: int, src
) -> None:
    frame = udp_frame(
        src_mac=src.mac,
        dst_mac=1,
        src_ip=src.ip,
        dst_ip=2,
        sport=src.udp_port,
        dport=AGG_UDP_PORT,
        payload=tail,
    )
    check_one(*switch, frame, port)


@st.composite
def mutated_update(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_UPDATES)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(("flip", "byte", "truncate", "extend")))
        if kind == "flip" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and frame:
            # Mostly the headers, where the decisions are made.
            i = draw(st.integers(0, min(len(frame), 60) - 1))
            frame[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del frame[draw(st.integers(0, len(frame))) :]
        elif kind == "extend":
            frame += draw(st.binary(max_size=64))
    return bytes(frame)


@FUZZ
@given(frame=mutated_update(), port=st.integers(0, 5))
def test_mutated_updates(switch: tuple[SwitchState, Pipeline], frame: bytes, port: int) -> None:
    check_one(*switch, frame, port)
