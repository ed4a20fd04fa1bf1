"""The topology/config file: parsing, validation, loss thresholds, UDP mode, the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from netagg.constants import AGG_UDP_PORT, POOL_SLOTS
from netagg.controller.errors import ConfigError
from netagg.controller.topology import ZERO_MAC, load_topology, loss_threshold, parse_topology

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "controller" / "examples"


def test_loss_threshold_rounds_and_caps() -> None:
    assert loss_threshold(0.0) == 0
    assert loss_threshold(0.25) == 2**30
    assert loss_threshold(1e-9) == round(1e-9 * 2**32)
    assert loss_threshold(1.0) == 2**32 - 1  # a 32-bit field: "always" is the largest value
    with pytest.raises(ConfigError, match="not in"):
        loss_threshold(1.5)


def test_parse_defaults(make_topo) -> None:
    topo = make_topo(pool={}, jobs={})
    assert topo.pool_slots == POOL_SLOTS
    assert topo.lease_seconds == 30.0
    assert topo.agg_port == AGG_UDP_PORT
    assert topo.hosts_by_addr["10.0.0.2"].port == 2


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("hosts", [{"name": "h", "mac": "02:00:00:00:00:01", "addr": "10.0.0.1", "port": 9}],
         "not one of the switch ports"),
        ("hosts", [{"name": "h", "mac": "nope", "addr": "10.0.0.1", "port": 1}], "not a MAC address"),
        ("hosts", [{"name": "h", "mac": "02:00:00:00:00:01", "addr": "10.0.0.300", "port": 1}], "not an IPv4"),
        ("hosts", [{"name": "h", "mac": "02:00:00:00:00:01", "addr": "10.0.0.1", "port": 1},
                   {"name": "g", "mac": "02:00:00:00:00:02", "addr": "10.0.0.1", "port": 2}], "duplicate host addr"),
        ("loss", [{"port": 1, "ingress": 2.0}], "not in"),
        ("pool", {"slots": POOL_SLOTS + 1}, "must be 1.."),
        ("pool", {"slots": 8, "default_job_slots": 9}, "default_job_slots"),
        ("jobs", {"lease_seconds": 0}, "must be a finite number of seconds > 0"),
        ("loss", [{"port": 1, "ingress": float("nan")}], "not in"),
        ("loss", [{"port": 1, "egress": float("inf")}], "not in"),
        ("jobs", {"lease": 3}, "unknown key"),
    ],
)
def test_parse_rejects(make_topo, section: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_topo(**{section: value})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "0.0"])
def test_a_lease_that_is_not_a_positive_finite_number_is_one_clear_line(tmp_path: Path, value: str) -> None:
    # TOML has nan and inf; a NaN lease would make every "silent for longer than the lease" test false.
    config = tmp_path / "c.toml"
    text = (EXAMPLES / "topology.toml").read_text()
    assert "\nlease_seconds = 30 " in text
    config.write_text(text.replace("\nlease_seconds = 30 ", f"\nlease_seconds = {value} "))
    with pytest.raises(ConfigError) as info:
        load_topology(config)
    message = str(info.value)
    assert "\n" not in message and "[jobs] lease_seconds" in message
    assert "must be a finite number of seconds > 0" in message


def test_udp_mode_needs_no_macs_and_pins_hosts() -> None:
    topo = parse_topology({"switch": {"address": "127.0.0.1:9559", "udp_mode": True, "agg_port": 40000}})
    assert topo.udp_mode and topo.ports == (1,) and topo.agg_port == 40000
    assert [(h.addr, h.port, h.mac) for h in topo.hosts] == [("127.0.0.1", 1, ZERO_MAC)]
    with pytest.raises(ConfigError, match="in udp_mode every host is 127.0.0.1 at port 1"):
        parse_topology({
            "switch": {"address": "127.0.0.1:9559", "udp_mode": True, "agg_port": 40000},
            "hosts": [{"name": "x", "addr": "10.0.0.1", "port": 1}],
        })
    with pytest.raises(ConfigError, match="agg_port"):
        parse_topology({"switch": {"address": "127.0.0.1:9559", "udp_mode": True}})


def test_load_reports_file_and_syntax(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[switch\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_topology(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["topology.toml", "udp_mode.toml"])
def test_examples_load(name: str) -> None:
    topo = load_topology(EXAMPLES / name)
    assert topo.hosts
