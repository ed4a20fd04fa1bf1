"""BML over TCP between threads on loopback, each card a 127.x address: the exact sum on every host, the
schedule's traffic on every card in every stage (on its own address), float32 through fixed point (the reference's
bits on every host), clear errors for a missing card or a size mismatch."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import numpy as np
import pytest
from fixed_point import fixed_point_reference

from netagg.host_agent.bml import BCube, card_load, execute, schedule
from netagg.host_agent.bml_transport import BmlError, BmlPeers

pytestmark = pytest.mark.loopback


def loopback_plan(cube: BCube) -> list[list[str]]:
    """Host h's level-l card: 127.<l + 1>.0.<h + 1> (every 127/8 address is local)."""
    return [[f"127.{level + 1}.0.{host + 1}" for level in range(cube.k)] for host in range(cube.hosts)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.1.0.1", 0))
        return s.getsockname()[1]


def on_every_host(cube: BCube, body: Callable[[int], object], timeout: float = 30.0) -> list[object]:
    """``body(host)`` in one thread per host; each result, or the exception it raised."""
    results: list[object] = [None] * cube.hosts

    def run(host: int) -> None:
        try:
            results[host] = body(host)
        except Exception as exc:  # reported to the test
            results[host] = exc

    threads = [threading.Thread(target=run, args=(h,), daemon=True) for h in range(cube.hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a host did not finish"
    return results


@pytest.mark.parametrize("cube", [BCube(2, 1), BCube(2, 2), BCube(3, 2), BCube(2, 3)], ids=str)
def test_every_host_ends_with_the_exact_sum_and_the_schedules_traffic(cube: BCube) -> None:
    count = 10_007  # pieces of unequal sizes
    rng = np.random.default_rng(cube.hosts)
    grads = rng.integers(-(2**31), 2**31, size=(cube.hosts, count), dtype=np.int64).astype(np.int32)
    plan, port = loopback_plan(cube), free_port()

    def host(h: int) -> tuple[np.ndarray, dict, dict]:
        with BmlPeers(cube, h, plan, port=port, timeout=20) as peers:
            data = grads[h].copy()
            peers.allreduce(data)
            traffic = dict(peers.traffic)
            peers.barrier()  # nobody closes a connection a peer still reads from
            return data, traffic, peers.card_addresses()

    results = on_every_host(cube, host)
    reference = execute(cube, grads)
    load = card_load(cube, schedule(cube, count))
    for h, result in enumerate(results):
        assert not isinstance(result, Exception), f"host {h}: {result!r}"
        data, traffic, bound = result
        np.testing.assert_array_equal(data, reference[h])
        # Every card sends and receives in every stage, exactly the elements the schedule gives it.
        assert traffic == {(s, lvl): load[(s, h, lvl)] for s in range(2 * cube.k) for lvl in range(cube.k)}
        assert all(sent > 0 and got > 0 for sent, got in traffic.values()), traffic
        assert bound == {level: {plan[h][level]} for level in range(cube.k)}


def test_a_card_address_that_is_not_on_the_host_is_a_clear_error() -> None:
    cube = BCube(2, 2)
    plan = loopback_plan(cube)
    plan[0][1] = "192.0.2.1"  # TEST-NET-1: on no interface here
    with pytest.raises(BmlError, match=r"host 0: no interface has the level-1 card address 192\.0\.2\.1"):
        BmlPeers(cube, 0, plan, port=free_port(), timeout=2).connect()


def test_a_plan_that_is_not_the_bcubes_is_refused() -> None:
    cube = BCube(3, 2)
    with pytest.raises(BmlError, match="has 9 hosts; the address plan lists 8"):
        BmlPeers(cube, 0, loopback_plan(BCube(2, 3)))
    plan = loopback_plan(cube)
    plan[4] = plan[4][:1]
    with pytest.raises(BmlError, match="host 4 has 1 card addresses in the plan"):
        BmlPeers(cube, 0, plan)


def test_hosts_syncing_different_sizes_fail_with_the_reason_not_a_hang() -> None:
    cube = BCube(2, 2)
    plan, port = loopback_plan(cube), free_port()

    def host(h: int) -> None:
        with BmlPeers(cube, h, plan, port=port, timeout=3) as peers:
            peers.allreduce(np.zeros(100 if h == 0 else 200, dtype=np.int32))

    results = on_every_host(cube, host)
    assert all(isinstance(r, BmlError) for r in results), results
    assert any("do all hosts sync the same size" in str(r) for r in results), results


def test_floats_are_refused() -> None:
    cube = BCube(2, 1)
    plan, port = loopback_plan(cube), free_port()

    def host(h: int) -> None:
        with BmlPeers(cube, h, plan, port=port, timeout=5) as peers:
            try:
                peers.allreduce(np.zeros(4, dtype=np.float32))
            finally:
                peers.barrier()

    results = on_every_host(cube, host)
    assert all(isinstance(r, BmlError) and "sums integers" in str(r) for r in results), results


@pytest.mark.parametrize("lanes", [256, 32])
def test_float32_sums_through_fixed_point_to_the_references_bits_on_every_host(lanes: int) -> None:
    cube = BCube(3, 2)  # 9 hosts: 4 bits of headroom
    count = 3_001
    rng = np.random.default_rng(5)
    scale = 10.0 ** rng.integers(-20, 21, size=count)  # the exponents differ from block to block and host to host
    floats = (rng.standard_normal((cube.hosts, count)) * scale).astype(np.float32)
    floats[4, 700] = np.nan  # that block is NaN on every host
    plan = loopback_plan(cube)

    # Free ports on every card, handed to every host as a launcher would (the torch backend: through its store).
    listening = [BmlPeers(cube, h, plan, port=0, timeout=20) for h in range(cube.hosts)]
    ports = [peers.listen() for peers in listening]

    def connected(h: int) -> np.ndarray:
        peers = listening[h]
        try:
            peers.connect(ports)
            data = floats[h].copy()
            peers.allreduce_float(data, lanes)
            peers.barrier()  # nobody closes a connection a peer still reads from
            return data
        finally:
            peers.close()

    results = on_every_host(cube, connected)
    fixed, exact, bound = fixed_point_reference(list(floats), lanes)
    nan_block = slice(700 // lanes * lanes, 700 // lanes * lanes + lanes)
    for h, result in enumerate(results):
        assert not isinstance(result, Exception), f"host {h}: {result!r}"
        np.testing.assert_array_equal(result.view(np.uint32), fixed.view(np.uint32))
        assert np.isnan(result[nan_block]).all()
        finite = ~np.isnan(result)
        assert finite.sum() == count - lanes
        assert np.all(np.abs(result[finite].astype(np.float64) - exact[finite]) <= bound[finite])

