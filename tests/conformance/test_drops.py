"""Frames the switch must drop and count: unknown or spoofed senders, wrong keys, other wire versions and every
malformed header."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from netagg.constants import DropReason, JobStat, MsgType
from netagg.wire import AGG_OFFSET, HEADER_BYTES, LANE_DTYPE, pack_header

from .frames import OP, Endpoint, set_header_field, udp_frame, update_frame, v1_update_payload
from .harness import PORTS, SwitchUnderTest, random_lanes
from .program import AGG, Job, make_workers

pytestmark = pytest.mark.netns

JOB = Job(job=1, workers=make_workers(1, 2, PORTS), pool_base=0, pool_size=4, size=0, epoch=1)
W0 = JOB.workers[0]
SLOT = 2


def _valid(lanes: int = 32, *, src: Endpoint = W0.endpoint, job: int = JOB.job, slot: int = SLOT,
           msg_type: MsgType = MsgType.UPDATE, key: int = W0.key) -> bytes:
    return update_frame(src, AGG, job=job, tsi=0, slot=slot, set=0, lanes=np.arange(lanes, dtype=np.int32),
                        msg_type=msg_type, key=key)


def _payload_with_lanes(lanes: int) -> bytes:
    """A size-0 header followed by ``lanes`` lanes (not 32): the UDP length disagrees with the size code."""
    header = bytearray(HEADER_BYTES)
    pack_header(header, 0, msg_type=MsgType.UPDATE, size=0, job=JOB.job, tsi=0, slot=SLOT, set=0, exp=0,
                key=W0.key, op=OP)
    return bytes(header) + np.arange(lanes, dtype=LANE_DTYPE).tobytes()


def _v1_frame() -> bytes:
    """w0's UPDATE in wire format v1, complete and otherwise valid (as a v1 worker would send it)."""
    payload = v1_update_payload(job=JOB.job, tsi=0, slot=SLOT, set=0, lanes=np.arange(32, dtype=np.int32))
    return udp_frame(W0.endpoint, AGG, payload)


@dataclass(frozen=True)
class Malformed:
    make: Callable[[], bytes]
    reason: DropReason
    #: Whether the frame still carries its job byte, so the drop is also counted in ``job_drops``.
    job_counted: bool = True


MALFORMED = {
    "v1-frame": Malformed(_v1_frame, DropReason.BAD_VERSION),
    "version-0": Malformed(lambda: set_header_field(_valid(), "version", 0), DropReason.BAD_VERSION),
    "version-3": Malformed(lambda: set_header_field(_valid(), "version", 3), DropReason.BAD_VERSION),
    # Another version's layout is unknown, so its frame announces no payload: a bare header is no parser error.
    "version-1-header-only": Malformed(
        lambda: set_header_field(_valid(), "version", 1)[:AGG_OFFSET + HEADER_BYTES], DropReason.BAD_VERSION),
    "result-msg-type": Malformed(lambda: _valid(msg_type=MsgType.RESULT), DropReason.BAD_MSG_TYPE),
    "undefined-msg-type": Malformed(lambda: set_header_field(_valid(), "msg_type", 3), DropReason.BAD_MSG_TYPE),
    "reserved-bit": Malformed(lambda: set_header_field(_valid(), "reserved", 1), DropReason.RESERVED_BIT),
    "undefined-flag-0x08": Malformed(lambda: set_header_field(_valid(), "flags", 0x08), DropReason.RESERVED_BIT),
    "undefined-flag-0x80": Malformed(lambda: set_header_field(_valid(), "flags", 0x80), DropReason.RESERVED_BIT),
    "wrong-key": Malformed(lambda: _valid(key=W0.key ^ 1), DropReason.BAD_KEY),
    "key-0": Malformed(lambda: _valid(key=0), DropReason.BAD_KEY),
    "key-of-another-worker": Malformed(lambda: _valid(key=JOB.workers[1].key), DropReason.BAD_KEY),
    "other-size-code": Malformed(lambda: _valid(64), DropReason.BAD_SIZE),
    "size-code-above-3": Malformed(lambda: set_header_field(_valid(), "size", 5), DropReason.BAD_SIZE),
    "udp-length-one-lane-long": Malformed(
        lambda: udp_frame(W0.endpoint, AGG, _payload_with_lanes(33)), DropReason.BAD_LENGTH),
    "slot-equal-to-pool-size": Malformed(lambda: _valid(slot=JOB.pool_size), DropReason.SLOT_OUT_OF_RANGE),
    "largest-slot": Malformed(lambda: _valid(slot=(1 << 15) - 1), DropReason.SLOT_OUT_OF_RANGE),
    "payload-one-lane-short": Malformed(
        lambda: udp_frame(W0.endpoint, AGG, _payload_with_lanes(31)), DropReason.PARSER_ERROR),
    "truncated-in-lanes": Malformed(lambda: _valid()[:AGG_OFFSET + HEADER_BYTES + 61], DropReason.PARSER_ERROR),
    "truncated-in-header": Malformed(lambda: _valid()[:AGG_OFFSET + 1], DropReason.PARSER_ERROR,
                                     job_counted=False),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_update_is_dropped_counted_and_leaves_the_slot_alone(sut: SwitchUnderTest, case: str) -> None:
    bad = MALFORMED[case]
    sut.admit(JOB)
    watch = sut.watch(JOB.job)
    frame = bad.make()
    sut.ports.send(W0.port, frame)
    watch.wait(drops={(JOB.job if bad.job_counted else None, bad.reason): 1})
    assert watch.byte_delta("drops", bad.reason) == len(frame), "drops counts the dropped frame's bytes"
    sut.ports.expect_silence()
    # Had the frame touched slot state, w0's bit would be set or the sum off: a clean round proves it did not.
    sut.complete_round(JOB, tsi=0, slot=SLOT, set=0, lanes=random_lanes(5, JOB.workers, 32))
    watch.wait(drops={(JOB.job if bad.job_counted else None, bad.reason): 1},
               stats={(1, JobStat.AGGREGATED): 2, (1, JobStat.COMPLETED): 1})


def _stranger(ip: str, port: int) -> Endpoint:
    return Endpoint(mac="02:00:00:99:00:01", ip=ip, udp_port=port)


W1 = JOB.workers[1]
UNKNOWN = {
    # (sender, job byte on the wire)
    "unregistered-host": (_stranger("10.99.0.1", 41000), 1),
    "job-not-admitted": (W0.endpoint, 7),
    "spoofed-ip-of-w0-with-port-of-w1": (_stranger(W0.endpoint.ip, W1.endpoint.udp_port), 1),
    "spoofed-port-of-w0-from-other-ip": (_stranger("10.1.0.200", W0.endpoint.udp_port), 1),
    "worker-of-job-1-claiming-job-2": (W0.endpoint, 2),
}


@pytest.mark.parametrize("case", list(UNKNOWN))
def test_unknown_or_spoofed_sender_is_dropped_and_counted(sut: SwitchUnderTest, case: str) -> None:
    sender, job_byte = UNKNOWN[case]
    other = Job(job=2, workers=make_workers(2, 2, PORTS), pool_base=4, pool_size=4, size=0, epoch=1)
    sut.admit(JOB, other)
    watch = sut.watch(JOB.job, other.job, job_byte)
    sut.ports.send(W0.port, _valid(src=sender, job=job_byte))
    watch.wait(drops={(job_byte, DropReason.UNKNOWN_WORKER): 1})
    sut.ports.expect_silence()
    sut.complete_round(JOB, tsi=0, slot=SLOT, set=0, lanes=random_lanes(6, JOB.workers, 32))


@pytest.mark.parametrize(
    "frame, reason",
    [
        # Within step 3: version, then msg_type, then reserved bits.
        (lambda: set_header_field(_valid(msg_type=MsgType.RESULT), "version", 0), DropReason.BAD_VERSION),
        (lambda: set_header_field(set_header_field(_valid(), "version", 3), "reserved", 1), DropReason.BAD_VERSION),
        (lambda: set_header_field(_valid(msg_type=MsgType.RESULT), "reserved", 1), DropReason.BAD_MSG_TYPE),
        # Header checks (step 3) come before the workers lookup (step 4) ...
        (lambda: set_header_field(_valid(src=_stranger("10.99.0.2", 41001)), "reserved", 1), DropReason.RESERVED_BIT),
        (lambda: set_header_field(_valid(src=_stranger("10.99.0.4", 41003)), "version", 1), DropReason.BAD_VERSION),
        # ... the key check follows the lookup (a stranger has no key to be wrong) ...
        (lambda: _valid(src=_stranger("10.99.0.5", 41004), key=0), DropReason.UNKNOWN_WORKER),
        # ... and the size check (step 5) comes after both.
        (lambda: _valid(64, src=_stranger("10.99.0.3", 41002)), DropReason.UNKNOWN_WORKER),
        (lambda: _valid(64, key=W0.key + 1), DropReason.BAD_KEY),
        # Within step 5: size, then length, then slot.
        (lambda: set_header_field(udp_frame(W0.endpoint, AGG, _payload_with_lanes(33)), "slot", 3000),
         DropReason.BAD_LENGTH),
    ],
    ids=["version-before-msg-type", "version-before-reserved-bit", "msg-type-before-reserved-bit",
         "reserved-bit-before-lookup", "version-before-lookup", "lookup-before-key", "lookup-before-size",
         "key-before-size", "length-before-slot"],
)
def test_checks_apply_in_protocol_order(sut: SwitchUnderTest, frame: Callable[[], bytes], reason: DropReason) -> None:
    sut.admit(JOB)
    watch = sut.watch(JOB.job)
    sut.ports.send(W0.port, frame())
    watch.wait(drops={(JOB.job, reason): 1})
    sut.ports.expect_silence()
