"""The fake switch against docs/protocol.md (wire format v2), with raw packets: the agent tests rely on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest
from fake_agg_switch import FakeSwitch

from netagg.constants import Flag, MsgType
from netagg.wire import AggHeader, decode, encode

pytestmark = pytest.mark.loopback

LANES = 32
T = 2**32 - 4  # a tsi just below the wrap


@pytest.fixture
def rig() -> Iterator[tuple[FakeSwitch, list[socket.socket], list[int]]]:
    """A two-worker fake switch with four slots and one raw UDP socket per worker; the workers' keys."""
    switch = FakeSwitch(2, lanes=LANES, slots=4)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    keys = []
    try:
        for wid, sock in enumerate(socks):
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5.0)
            keys.append(switch.register(*sock.getsockname(), wid))
        with switch:
            yield switch, socks, keys
    finally:
        for sock in socks:
            sock.close()


def _send(switch: FakeSwitch, sock: socket.socket, key: int, tsi: int, set_: int, *, op: int = 1, flags: int = 0,
          value: int = 1) -> None:  # fmt: skip
    header = AggHeader(MsgType.UPDATE, switch.size, switch.job_id, tsi, 0, set_, 0, flags, key, op)
    sock.sendto(encode(header, np.full(LANES, value, np.int32)), switch.address)


def _result(sock: socket.socket) -> tuple[AggHeader, np.ndarray]:
    return decode(sock.recv(4096))


def _round(rig: tuple, tsi: int, set_: int, ops: tuple[int, int] = (1, 1), flags: tuple[int, int] = (0, 0)) -> list:
    switch, socks, keys = rig
    for wid in range(2):
        _send(switch, socks[wid], keys[wid], tsi, set_, op=ops[wid], flags=flags[wid], value=wid + 1)
    return [_result(sock) for sock in socks]


def test_each_result_carries_its_receivers_key_and_the_sum(rig: tuple) -> None:
    _, _, keys = rig
    results = _round(rig, 0, 0)
    for wid, (header, lanes) in enumerate(results):
        assert header.key == keys[wid] and header.msg_type == MsgType.RESULT and header.flags == 0
        assert lanes.tolist() == [3] * LANES


def test_an_update_with_another_key_is_dropped(rig: tuple) -> None:
    switch, socks, keys = rig
    _send(switch, socks[0], keys[0] ^ 1, 0, 0, value=100)  # a forger at worker 0's address, without its key
    results = _round(rig, 0, 0)
    assert results[0][1].tolist() == [3] * LANES
    assert switch.counters["bad_key"] == 1


def test_different_ops_are_flagged_mismatch_with_the_first_op(rig: tuple) -> None:
    results = _round(rig, 0, 0, ops=(7, 8))
    for header, _ in results:
        assert header.flags == Flag.MISMATCH and header.op == 7


def test_abort_is_ored_over_the_round(rig: tuple) -> None:
    results = _round(rig, 0, 0, flags=(0, Flag.ABORT))
    assert [header.flags for header, _ in results] == [Flag.ABORT, Flag.ABORT]


def test_an_old_update_never_opens_a_round_across_the_tsi_wrap(rig: tuple) -> None:
    switch, socks, keys = rig
    _round(rig, T, 0)  # set 0 completes at tsi 2**32 - 4
    _round(rig, (T + 4) % 2**32, 1)  # the next round, set 1, tsi 0: clears both workers' bits in set 0
    _send(switch, socks[0], keys[0], T - 8, 0)  # a long-delayed duplicate of an older round on set 0
    header, lanes = _round(rig, (T + 8) % 2**32, 0)[1]  # tsi 4 is newer than 2**32 - 4 in serial order
    assert header.tsi == 4 and lanes.tolist() == [3] * LANES  # the old packet added nothing
    assert switch.counters["stale"] == 1


def test_drops_are_the_pipelines_by_reason_and_add_nothing(rig: tuple) -> None:
    """Aggregation is the software switch's reference pipeline: the fake switch counts what it drops under the
    pipeline's own reasons (netagg.constants.DropReason) and its job statistics (JobStat)."""
    switch, socks, keys = rig
    header = AggHeader(MsgType.UPDATE, switch.size, switch.job_id, 0, 0, 0, 0, 0, keys[0], 1)
    good = encode(header, np.full(LANES, 100, np.int32))
    reserved = bytes([good[0] | 0x08]) + good[1:]  # byte 0's reserved bit (netagg.wire.HEADER_FIELDS)
    version_1 = bytes([(1 << 6) | (good[0] & 0x3F)]) + good[1:]  # byte 0's version field: 1
    for bad in (reserved, version_1, good[:-4]):  # the last one is truncated
        socks[0].sendto(bad, switch.address)
    results = _round(rig, 0, 0)
    assert [lanes.tolist() for _, lanes in results] == [[3] * LANES] * 2
    counters = switch.counters
    assert (counters["reserved_bit"], counters["bad_version"], counters["parser_error"]) == (1, 1, 1)
    assert (counters["aggregated"], counters["completed"]) == (2, 1)
