"""The committed BMv2 JSON and P4Info match the wire format and the P4Info contract of docs/protocol.md."""

from __future__ import annotations

from typing import Any

import pytest
from finsy.proto import p4i
from p4info_contract import ACTIONS, COUNTERS, TABLES

from netagg import constants as c
from netagg import wire

pytestmark = pytest.mark.unit

#: register -> bit width; every one has an entry per slot copy.
REGISTERS = {
    "slot_epoch": c.EPOCH_BITS,
    "slot_bitmap": c.MAX_WORKERS,
    "slot_count": 8,
    "slot_tsi": dict(wire.HEADER_FIELDS)["tsi"],
    "slot_exp": 8,
    "slot_flags": 8,
    "slot_op": dict(wire.HEADER_FIELDS)["op"],
    **{f"lane_{i}": 8 * c.LANE_BYTES for i in range(c.MAX_LANES)},
}


def _by_name(entities: Any) -> dict[str, Any]:
    return {e.preamble.name: e for e in entities}


# ------------------------------------------------------------------------------------------------ BMv2 JSON


def test_agg_header_matches_the_wire_format(bmv2_json: dict[str, Any]) -> None:
    types = {t["name"]: t for t in bmv2_json["header_types"]}
    fields = [(name, width) for name, width, *_ in types["agg_h"]["fields"]]
    assert fields == list(wire.HEADER_FIELDS)
    assert sum(width for _, width in fields) == 8 * wire.HEADER_BYTES


def test_payload_blocks_match_the_lane_layout(bmv2_json: dict[str, Any]) -> None:
    types = {t["name"]: t for t in bmv2_json["header_types"]}
    fields = [(name, width) for name, width, *_ in types["lanes_h"]["fields"]]
    assert fields == [(f"v{j}", 8 * c.LANE_BYTES) for j in range(c.LANES_PER_BLOCK)]
    stacks = {s["name"]: s for s in bmv2_json["header_stacks"]}
    assert stacks["lanes"]["size"] == c.MAX_LANES // c.LANES_PER_BLOCK


def test_agg_header_follows_udp_in_the_deparser(bmv2_json: dict[str, Any]) -> None:
    headers = {h["id"]: h["name"] for h in bmv2_json["headers"]}
    order = bmv2_json["deparsers"][0]["order"]
    assert order[:5] == ["ethernet", "arp", "ipv4", "udp", "agg"]
    assert order[5:] == [f"lanes[{b}]" for b in range(c.MAX_LANES // c.LANES_PER_BLOCK)]
    assert set(order) <= set(headers.values())


def test_register_arrays_have_one_entry_per_slot_copy(bmv2_json: dict[str, Any]) -> None:
    arrays = {r["name"]: r for r in bmv2_json["register_arrays"]}
    assert {name: (a["bitwidth"], a["size"]) for name, a in arrays.items()} == {
        name: (width, 2 * c.POOL_SLOTS) for name, width in REGISTERS.items()
    }


def test_no_absolute_source_paths(bmv2_json: dict[str, Any]) -> None:
    """The committed JSON names repository files only (p4c ran on relative paths from the repository root)."""
    filenames: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            info = node.get("source_info")
            if isinstance(info, dict) and "filename" in info:
                filenames.add(info["filename"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(bmv2_json)
    assert filenames, "no source_info found: has the JSON layout changed?"
    assert sorted(f for f in filenames if f.startswith("/")) == []
    assert not bmv2_json["program"].startswith("/")


# ------------------------------------------------------------------------------------------------ P4Info


def test_tables_keys_and_actions(p4info: p4i.P4Info) -> None:
    tables = _by_name(p4info.tables)
    actions_by_id = {a.preamble.id: a.preamble.name for a in p4info.actions}
    assert set(tables) == set(TABLES)
    for name, contract in TABLES.items():
        table = tables[name]
        assert tuple((f.name, f.bitwidth) for f in table.match_fields) == contract.keys, name
        assert all(f.match_type == p4i.MatchField.EXACT for f in table.match_fields), name
        refs = {actions_by_id[ref.id] for ref in table.action_refs}
        assert refs - {"NoAction"} == contract.actions, name


def test_action_parameters(p4info: p4i.P4Info) -> None:
    actions = _by_name(p4info.actions)
    for name, params in ACTIONS.items():
        assert tuple((p.name, p.bitwidth) for p in actions[name].params) == params, name


def test_default_actions(p4info: p4i.P4Info, bmv2_json: dict[str, Any]) -> None:
    """A miss does nothing where the contract says "no entry"; the other defaults are settable, initially the
    contract's (this compiler does not fill P4Info's initial_default_action, so they are read from the JSON)."""
    tables = _by_name(p4info.tables)
    actions_by_id = {a.preamble.id: a.preamble.name for a in p4info.actions}
    json_actions = {a["id"]: a["name"] for a in bmv2_json["actions"]}
    json_tables = {t["name"]: t for p in bmv2_json["pipelines"] for t in p["tables"]}
    settable = [name for name, contract in TABLES.items() if not contract.const_default]
    assert sorted(settable) == ["agg_addr", "l2_forward"]
    for name, contract in TABLES.items():
        const = actions_by_id.get(tables[name].const_default_action_id)
        assert const == (contract.default if contract.const_default else None), name
        entry = json_tables[name]["default_entry"]
        assert json_actions[entry["action_id"]] == contract.default, name
        assert [int(v, 16) for v in entry["action_data"]] == list(contract.default_params.values()), name
        assert entry["action_const"] == contract.const_default, name


def test_table_sizes(p4info: p4i.P4Info) -> None:
    tables = _by_name(p4info.tables)
    assert tables["workers"].size == c.MAX_JOBS * c.MAX_WORKERS
    assert tables["results"].size == c.MAX_JOBS * c.MAX_WORKERS
    assert tables["ingress_loss"].size == tables["egress_loss"].size == 1 << c.PORT_BITS


def test_counters(p4info: p4i.P4Info) -> None:
    counters = _by_name(p4info.counters)
    assert {name: counter.size for name, counter in counters.items()} == COUNTERS
    for name, counter in counters.items():
        assert counter.spec.unit == p4i.CounterSpec.BOTH, name


def test_registers(p4info: p4i.P4Info) -> None:
    registers = _by_name(p4info.registers)
    assert {name: r.type_spec.bitstring.bit.bitwidth for name, r in registers.items()} == REGISTERS
    assert {r.size for r in registers.values()} == {2 * c.POOL_SLOTS}
