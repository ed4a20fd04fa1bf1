"""The demo's data side without root: topology data, the controller config it writes, the reference result."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

# The demo is not part of the installed distribution: import it from the repository root (`python -m pytest`).
import examples.mininet.__main__ as demo_cli
from examples.mininet import reference
from examples.mininet import topology as mininet_demo
from examples.mininet.progress import HostState, JobCounters, ProgressLine
from netagg.constants import DropReason, JobStat
from netagg.controller.topology import load_topology
from netagg.host_agent import quantize as q
from netagg.host_agent.cli import memory_needed, rank_data

pytestmark = pytest.mark.unit


def test_star_topology_addresses_are_distinct_and_on_their_networks() -> None:
    topo = mininet_demo.star(4)
    assert [h.name for h in topo.hosts] == ["h1", "h2", "h3", "h4"]
    assert topo.ports == (1, 2, 3, 4)
    assert len({h.mac for h in topo.hosts} | {topo.agg_mac}) == 5
    assert [topo.switch_intf(p) for p in topo.ports] == ["s1-eth1", "s1-eth2", "s1-eth3", "s1-eth4"]


@pytest.mark.parametrize("n", [0, 33])
def test_star_rejects_host_counts_a_job_cannot_have(n: int) -> None:
    with pytest.raises(mininet_demo.TopologyError):
        mininet_demo.star(n)


def test_generated_controller_config_is_accepted_by_the_controller(tmp_path: Path) -> None:
    topo = mininet_demo.star(3)
    path = tmp_path / "controller.toml"
    path.write_text(mininet_demo.controller_config(topo, loss=0.01))
    loaded = load_topology(path)
    assert loaded.ports == topo.ports
    assert [(h.name, h.mac, h.addr, h.port) for h in loaded.hosts] == [
        (h.name, h.mac, h.ipv4, h.port) for h in topo.hosts
    ]
    assert loaded.mac == topo.agg_mac and loaded.addr == topo.agg_ipv4
    assert {(x.port, x.ingress, x.egress) for x in loaded.loss} == {(p, 0.01, 0.01) for p in topo.ports}


def test_no_loss_means_no_loss_entries(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(mininet_demo.controller_config(mininet_demo.star(2), loss=0.0))
    assert load_topology(path).loss == ()


def test_topology_file_round_trip_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "topo.toml"
    good.write_text(
        '[switch]\nagg_ipv4 = "10.0.0.254"\n'
        '[[hosts]]\nname = "a"\nmac = "02:00:00:00:01:01"\nipv4 = "10.0.0.11"\nport = 3\n'
        'mgmt_ipv4 = "10.255.3.2"\nmgmt_gateway = "10.255.3.1"\n'
        '[[hosts]]\nname = "b"\nmac = "02:00:00:00:01:02"\nipv4 = "10.0.0.12"\nport = 7\n'
        'mgmt_ipv4 = "10.255.7.2"\nmgmt_gateway = "10.255.7.1"\n'
    )
    topo = mininet_demo.load(good)
    assert topo.ports == (3, 7) and topo.hosts[1].data_intf == "b-eth0"
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('"10.0.0.12"', '"10.0.0.11"'))
    with pytest.raises(mininet_demo.TopologyError, match="duplicate data IPv4"):
        mininet_demo.load(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(good.read_text().replace("[switch]\n", "[switch]\ncolour = 1\n"))
    with pytest.raises(mininet_demo.TopologyError, match="unknown keys"):
        mininet_demo.load(unknown)


@pytest.mark.parametrize(("world", "size", "lanes"), [(2, 4096, 256), (3, 1000, 32), (4, 65536, 64)])
def test_reference_is_within_the_quantizers_bound_of_the_exact_sum(world: int, size: int, lanes: int) -> None:
    result = reference.reference_result(7, world, size, lanes)
    count = size // 4
    inputs = [rank_data(7, r, count, "float32", world) for r in range(world)]
    exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    m = -(-count // lanes)
    padded = np.zeros((world, m * lanes), np.float32)
    for i, x in enumerate(inputs):
        padded[i, :count] = x
    shared = np.max([q.block_exponents(p.reshape(m, lanes))[0].astype(np.int16) for p in padded], axis=0)
    bound = q.error_bound(np.pad(exact, (0, m * lanes - count)).reshape(m, lanes), shared, world)
    assert result.dtype == np.float32 and result.shape == (count,)
    assert np.all(np.abs(result - exact) <= bound.reshape(-1)[:count])
    # The digest pins the bytes: a different seed gives a different one.
    assert reference.digest(result) != reference.digest(reference.reference_result(8, world, size, lanes))


def test_int32_reference_is_the_exact_sum() -> None:
    result = reference.reference_result(1, 3, 400, 32, dtype="int32")
    inputs = [rank_data(1, r, 100, "int32", 3) for r in range(3)]
    assert np.array_equal(result, np.sum(inputs, axis=0, dtype=np.int64).astype(np.int32))


def test_job_counters_read_the_controllers_stats_format() -> None:
    # The shape of one job in `netagg-controller stats --json`: every JobStat and DropReason by lower-case name.
    job = {"job": "demo", "job_id": 3}
    for i, stat in enumerate(JobStat):
        job[stat.name.lower()] = {"packets": 10 * (i + 1), "bytes": 0}
    job["drops"] = {
        r.name.lower(): {"packets": 7 if r is DropReason.SIMULATED_LOSS else 0, "bytes": 0}
        for r in DropReason
    }
    counters = JobCounters.from_stats(job)
    assert (counters.aggregated, counters.completed, counters.retransmit_answered) == (10, 20, 30)
    assert counters.drops == {"simulated_loss": 7}


def test_progress_line_clamps_and_names_every_host() -> None:
    hosts = [HostState("h1", "running"), HostState("h2", "done")]
    line = ProgressLine(expected_chunks=100, stream=io.StringIO())
    assert line.render(1.0, hosts, None).endswith("waiting for every host to join | h1:running h2:done")
    text = line.render(2.5, hosts, JobCounters(completed=130, retransmit_answered=4))
    assert text.startswith("progress: [   2.5 s] 100.0% (130 chunks summed, 4 retransmissions answered)")
    finished = [HostState("h1", "done"), HostState("h2", "failed")]
    assert line.render(3.0, finished, JobCounters(completed=20)) == (
        "progress: [   3.0 s] finished (20 chunks summed by the last poll) | h1:done h2:failed"
    )


# -- the demo's options: a bad value is one line naming the option, exit status 2, before anything is built ----


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--bw", "nan", "finite"),  # nan and inf were accepted
        ("--bw", "inf", "finite"),
        ("--timeout", "nan", "finite"),
        ("--timeout", "0", "> 0"),
        ("--seed", "-1", "0..4294967295"),  # was accepted, then the switch refused it
        ("--size", "2", "at least 4"),
        ("--size", "10", "multiple of 4"),  # the agents silently all-reduced 8 bytes
        ("--size", "10000000000000", "memory"),
        ("--window", "0", "1..1024"),
        ("--window", "5000", "1..1024"),  # was accepted, then every agent failed
        ("--hosts", "33", "1..32"),
        ("--loss", "x", "[0, 1)"),
        ("--iterations", "0", "at least 1"),
        ("--epochs", "0", "at least 1"),
    ],
)
def test_demo_rejects_a_bad_value_in_one_line_naming_the_option(
    option: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        demo_cli.main([option, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("python -m examples.mininet: error:")]
    assert len(errors) == 1 and option in errors[0] and says in errors[0], err


def test_demo_size_check_counts_every_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every host runs an agent with --check on this machine: the memory check is for all of them."""
    size = 64 << 20
    per_host = memory_needed(size, "float32", check=True)
    monkeypatch.setattr(demo_cli, "available_memory", lambda: 8 * per_host)
    with pytest.raises(SystemExit) as exited:
        demo_cli.main(["--hosts", "9", "--size", str(size)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --size" in err and "9 hosts" in err and "memory" in err, err
    assert demo_cli.memory_check(8, size) is None  # 8 hosts fit
