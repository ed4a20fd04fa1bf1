"""UDP mode on loopback: workers are plain UDP sockets, the switch runs in process (no P4Runtime server)."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from test_pipeline_contract import (
    Job,
    Worker,
    contract_state,
    drops,
    install_job,
    install_switch,
    job_stats,
    update_payload,
)

from netagg.constants import DropReason, JobStat, MsgType
from netagg.softswitch.pipeline import Pipeline
from netagg.softswitch.ports import UDP_PORT_NUMBER, UdpPorts, parse_udp_address
from netagg.softswitch.state import SwitchState
from netagg.softswitch.switch import SoftSwitch
from netagg.wire import decode

pytestmark = pytest.mark.loopback

LOCALHOST = int(ipaddress.IPv4Address("127.0.0.1"))
DEADLINE_S = 10.0


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(DEADLINE_S)
    return sock


def loopback_job(
    job: int, sockets: list[socket.socket], *, size: int = 0, port: int = UDP_PORT_NUMBER
) -> Job:
    workers = tuple(
        Worker(
            job=job, worker_id=i, ip=LOCALHOST, udp_port=s.getsockname()[1], mac=0x020000000100 + i, port=port,
            key=0xC0FFEE00 + i,
        )  # fmt: skip
        for i, s in enumerate(sockets)
    )
    return Job(job=job, workers=workers, pool_base=0, pool_size=8, size=size, epoch=1)


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(params=[True, False], ids=["native-io", "python-io"])
def switch(request: pytest.FixtureRequest) -> Iterator[tuple[SwitchState, SoftSwitch]]:
    state = contract_state()
    install_switch(state)
    pipeline = Pipeline(state, seed=3)
    sw = SoftSwitch(pipeline, UdpPorts(("127.0.0.1", 0), pipeline.agg_source, native=request.param))
    with sw:
        yield state, sw


def test_workers_on_loopback_get_the_sum(switch: tuple[SwitchState, SoftSwitch]) -> None:
    state, sw = switch
    address = sw.ports.address  # type: ignore[attr-defined]
    sockets = [udp_socket() for _ in range(3)]
    try:
        job = loopback_job(9, sockets, size=1)
        install_job(state, job)
        rng = np.random.default_rng(1)
        for tsi in range(20):
            values = [rng.integers(-1000, 1000, size=64).astype(np.int32) for _ in sockets]
            for sock, w, v in zip(sockets, job.workers, values):
                sock.sendto(
                    update_payload(job=9, tsi=tsi, slot=tsi % 8, set_=(tsi // 8) % 2, lanes=v, key=w.key), address
                )
            for sock in sockets:
                data, sender = sock.recvfrom(4096)
                assert sender == address
                header, lanes = decode(data)
                assert (header.msg_type, header.tsi, header.job) == (MsgType.RESULT, tsi, 9)
                assert header.key == job.workers[sockets.index(sock)].key
                np.testing.assert_array_equal(lanes, np.sum(values, axis=0))
        assert job_stats(state, 9) == {JobStat.AGGREGATED: 60, JobStat.COMPLETED: 20}
        assert drops(state) == {}
        # The data path thread counts a batch's frames after handling it, so the last RESULT can arrive first.
        wait_for(lambda: (sw.ports.stats.rx, sw.ports.stats.tx) == (60, 60), "the port statistics of 60 frames")
    finally:
        for s in sockets:
            s.close()


def test_unknown_sender_and_garbage_are_counted_drops(switch: tuple[SwitchState, SoftSwitch]) -> None:
    state, sw = switch
    address = sw.ports.address  # type: ignore[attr-defined]
    with udp_socket() as stranger:
        stranger.sendto(update_payload(job=2, tsi=0, slot=0, set_=0, lanes=np.zeros(32, np.int32)), address)
        stranger.sendto(b"\x00" * 5, address)  # shorter than the aggregation header
        stranger.sendto(b"", address)
        wait_for(lambda: sum(drops(state).values()) == 3, "three drops")
    assert drops(state) == {DropReason.UNKNOWN_WORKER: 1, DropReason.PARSER_ERROR: 2}


def test_frames_for_other_ports_are_not_sent(switch: tuple[SwitchState, SoftSwitch]) -> None:
    state, sw = switch
    address = sw.ports.address  # type: ignore[attr-defined]
    with udp_socket() as a, udp_socket() as b:
        job = loopback_job(4, [a, b], port=2)  # RESULT replicas go to port 2, which UDP mode does not have
        install_job(state, job)
        for sock, w in zip((a, b), job.workers):
            sock.sendto(update_payload(job=4, tsi=0, slot=0, set_=0, lanes=np.ones(32, np.int32), key=w.key), address)
        wait_for(lambda: sw.ports.stats.tx_unroutable == 2, "two unroutable RESULTs")
        assert job_stats(state, 4)[JobStat.COMPLETED] == 1 and sw.ports.stats.tx == 0


def test_synthesized_headers_carry_the_sender_and_the_aggregation_address() -> None:
    seen: list[tuple[bytes, int]] = []
    state = contract_state()
    install_switch(state)
    pipeline = Pipeline(state)
    with UdpPorts(("127.0.0.1", 0), pipeline.agg_source) as ports, udp_socket() as sender:
        sender.sendto(b"hello", ports.address)  # type: ignore[attr-defined]
        sender_port = sender.getsockname()[1]
        deadline = time.monotonic() + DEADLINE_S
        while not seen and time.monotonic() < deadline:
            ports.receive(ports.fds()[0], lambda frame, port: seen.append((bytes(frame), port)))
        ((frame, port),) = seen
    agg_mac, agg_ip = pipeline.agg_source()  # type: ignore[misc]
    assert port == UDP_PORT_NUMBER
    assert frame[0:6] == agg_mac and frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 17
    assert frame[26:30] == socket.inet_aton("127.0.0.1") and int.from_bytes(frame[30:34], "big") == agg_ip
    assert int.from_bytes(frame[34:36], "big") == sender_port
    assert int.from_bytes(frame[36:38], "big") == 48864 and int.from_bytes(frame[38:40], "big") == 8 + 5
    assert int.from_bytes(frame[16:18], "big") == 20 + 8 + 5 and frame[42:] == b"hello"


@pytest.mark.unit
def test_udp_address_parsing() -> None:
    assert parse_udp_address(None) == ("127.0.0.1", 48864)
    assert parse_udp_address("0.0.0.0:5000") == ("0.0.0.0", 5000)
    assert parse_udp_address("localhost:1") == ("127.0.0.1", 1)
    for bad in ("127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "no-such-host.invalid:1"):
        with pytest.raises(ValueError):
            parse_udp_address(bad)
