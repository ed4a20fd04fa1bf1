"""P4Info schema: names, ids, bitwidths, initial defaults, the empty SwitchState, and program comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import text_format
from p4info_contract import ACTIONS, COUNTERS, TABLES, committed_bmv2_json, committed_p4info

from netagg.softswitch.codec import encode_uint
from netagg.softswitch.schema import (
    P4Schema,
    SchemaError,
    defaults_from_bmv2_json,
    load_p4info,
    pipeline_differences,
)
from netagg.softswitch.state import Action, SwitchState

pytestmark = pytest.mark.unit


def _committed_defaults(p4info: p4i.P4Info) -> dict[str, Action]:
    """The initial default actions the committed BMv2 JSON gives the tables of ``p4info``."""
    return defaults_from_bmv2_json(committed_bmv2_json(), p4info)


def _committed_schema() -> P4Schema:
    p4info = committed_p4info()
    return P4Schema(p4info, _committed_defaults(p4info))


def _named(entities: Any, name: str) -> Any:
    """The table, action or counter called ``name`` in a P4Info list."""
    (entity,) = (e for e in entities if e.preamble.name == name)
    return entity


def _contract_default(table: str) -> Action:
    return Action(TABLES[table].default, TABLES[table].default_params)


def test_contract_names_keys_and_params() -> None:
    schema = _committed_schema()
    for table, contract in TABLES.items():
        assert tuple((mf.name, mf.bitwidth) for mf in schema.tables[table].match_fields) == contract.keys, table
    for action, params in ACTIONS.items():
        assert tuple((p.name, p.bitwidth) for p in schema.actions[action].params) == params, action
    for counter, size in COUNTERS.items():
        assert schema.counters[counter].size == size
    for kind, by_name, by_id in [
        ("table", schema.tables, schema.tables_by_id),
        ("action", schema.actions, schema.actions_by_id),
        ("counter", schema.counters, schema.counters_by_id),
    ]:
        assert {i.id: i for i in by_name.values()} == by_id, kind


def test_new_state_has_every_table_and_counter() -> None:
    schema = _committed_schema()
    state = schema.new_state()
    assert set(state.tables) == set(schema.tables) == set(TABLES)
    for name, contract in TABLES.items():
        table = state.tables[name]
        assert table.key_names == tuple(k for k, _ in contract.keys)
        assert table.size == schema.tables[name].size > 0
        assert table.default == table.initial_default == _contract_default(name), name
        assert table.entries == {}
    assert state.tables["agg_addr"].default == Action("set_agg_addr", {"mac": 0, "addr": 0})
    assert state.tables["l2_forward"].default == Action("flood")
    assert state.tables["workers"].default == Action("NoAction")
    assert {n: c.size for n, c in state.counters.items()} == COUNTERS
    assert all(not c.packets.any() and not c.bytes.any() for c in state.counters.values())
    assert state.mcast_groups == {}


def test_reset_state_replaces_contents_in_place() -> None:
    schema = _committed_schema()
    state = SwitchState()
    schema.reset_state(state)
    state.tables["l2_forward"].entries[(1,)] = Action("forward", {"port": 1})
    state.mcast_groups[1] = [(1, 0)]
    state.counters["drops"].count(0, 60)
    before = id(state)
    schema.reset_state(state)
    assert id(state) == before
    assert state.tables["l2_forward"].entries == {}
    assert state.mcast_groups == {}
    assert state.counters["drops"].packets[0] == 0


def _with_initial_default(p4info: p4i.P4Info, table: str, action: str, **params: int) -> p4i.P4Info:
    """``p4info`` with ``table``'s initial_default_action set, as a compiler for P4Runtime 1.4 writes it (the
    committed P4Info has none: its compiler leaves the initial defaults to the BMv2 JSON)."""
    a = _named(p4info.actions, action)
    default = _named(p4info.tables, table).initial_default_action
    default.action_id = a.preamble.id
    for p in a.params:
        default.arguments.add(param_id=p.id, value=encode_uint(params[p.name], p.bitwidth))
    return p4info


def test_initial_defaults_from_p4info_alone() -> None:
    """The P4Info's initial_default_action (P4Runtime 1.4) and const defaults are enough without a JSON."""
    p4info = _with_initial_default(committed_p4info(), "agg_addr", "set_agg_addr", mac=0x0A0B, addr=0x0A000001)
    p4info = _with_initial_default(p4info, "l2_forward", "flood")
    schema = P4Schema(p4info)
    assert schema.tables["agg_addr"].initial_default == Action("set_agg_addr", {"mac": 0x0A0B, "addr": 0x0A000001})
    assert schema.tables["l2_forward"].initial_default == Action("flood")
    assert schema.tables["workers"].const_default_action_id == schema.actions["NoAction"].id
    assert schema.tables["workers"].initial_default == Action("NoAction")


def test_default_unknown_without_json_is_refused() -> None:
    with pytest.raises(SchemaError, match="'l2_forward'.*push the BMv2 JSON"):
        P4Schema(committed_p4info())
    with pytest.raises(SchemaError, match="'agg_addr'.*push the BMv2 JSON"):
        P4Schema(_with_initial_default(committed_p4info(), "l2_forward", "flood"))


def test_defaults_from_bmv2_json() -> None:
    p4info = committed_p4info()
    # A JSON of the parts the parser reads: another agg_addr default than the program's, a table not in the P4Info.
    doc = {
        "actions": [
            {"name": "NoAction", "id": 0, "runtime_data": []},
            {
                "name": "set_agg_addr",
                "id": 7,
                "runtime_data": [{"name": "mac", "bitwidth": 48}, {"name": "addr", "bitwidth": 32}],
            },
        ],
        "pipelines": [
            {
                "name": "egress",
                "tables": [
                    {
                        "name": "agg_addr",
                        "default_entry": {"action_id": 7, "action_data": ["0x0a0b", "0x0a000001"]},
                    },
                    {"name": "tbl_hidden", "default_entry": {"action_id": 0, "action_data": []}},
                ],
            }
        ],
    }
    defaults = defaults_from_bmv2_json(json.dumps(doc).encode(), p4info)
    assert defaults == {"agg_addr": Action("set_agg_addr", {"mac": 0x0A0B, "addr": 0x0A000001})}
    schema = P4Schema(p4info, {**_committed_defaults(p4info), **defaults})
    assert schema.tables["agg_addr"].initial_default == defaults["agg_addr"]
    with pytest.raises(SchemaError, match="BMv2 JSON"):
        defaults_from_bmv2_json(b"{not json", p4info)


def test_default_must_be_an_action_of_the_table() -> None:
    p4info = committed_p4info()
    defaults = _committed_defaults(p4info)
    with pytest.raises(SchemaError, match="not one of its actions"):
        P4Schema(p4info, {**defaults, "workers": Action("forward", {"port": 1})})
    with pytest.raises(SchemaError, match="params"):
        P4Schema(p4info, {**defaults, "agg_addr": Action("set_agg_addr", {"mac": 1})})


def test_refuses_what_the_software_switch_cannot_realize() -> None:
    defaults = _committed_defaults(committed_p4info())
    p4info = committed_p4info()
    _named(p4info.tables, "workers").match_fields[0].match_type = p4i.MatchField.TERNARY
    with pytest.raises(SchemaError, match="only exact match"):
        P4Schema(p4info, defaults)
    p4info = committed_p4info()
    _named(p4info.tables, "workers").implementation_id = 0x11000001
    with pytest.raises(SchemaError, match="action profile"):
        P4Schema(p4info, defaults)
    p4info = committed_p4info()
    _named(p4info.tables, "results").preamble.alias = "workers"
    with pytest.raises(SchemaError, match="duplicate table"):
        P4Schema(p4info, defaults)


def test_load_p4info_text_and_binary(tmp_path: Path) -> None:
    p4info = committed_p4info()
    text = tmp_path / "p.txtpb"
    text.write_text(text_format.MessageToString(p4info))
    binary = tmp_path / "p.bin"
    binary.write_bytes(p4info.SerializeToString())
    assert load_p4info(text) == p4info
    assert load_p4info(binary) == p4info
    garbage = tmp_path / "garbage"
    garbage.write_text("tables { nonsense")
    with pytest.raises(SchemaError, match="not a P4Info"):
        load_p4info(garbage)


def test_pipeline_differences_names_what_differs() -> None:
    reference = committed_p4info()
    assert pipeline_differences(reference, committed_p4info()) == []

    renamed = committed_p4info()
    workers = _named(renamed.tables, "workers")
    workers.preamble.alias = workers.preamble.name = "workerz"
    diffs = pipeline_differences(reference, renamed)
    assert "table 'workers' is missing" in diffs
    assert "table 'workerz' is not in netagg's P4Info" in diffs

    moved = committed_p4info()
    _named(moved.actions, "set_worker").preamble.id += 100
    assert any(d.startswith("action 'set_worker' has id") for d in pipeline_differences(reference, moved))

    wider = committed_p4info()
    _named(wider.tables, "workers").match_fields[0].bitwidth = 16
    assert any(d.startswith("table 'workers': key") for d in pipeline_differences(reference, wider))

    smaller = committed_p4info()
    _named(smaller.counters, "drops").size = 1
    assert f"counter 'drops': size 1, expected {COUNTERS['drops']}" in pipeline_differences(reference, smaller)


def test_committed_program_is_realizable() -> None:
    """The committed BMv2 JSON gives every table's default, and they are the contract's initial defaults."""
    p4info = committed_p4info()
    defaults = _committed_defaults(p4info)
    schema = P4Schema(p4info, defaults)
    assert set(defaults) == set(schema.tables), "the BMv2 JSON names every P4Info table's default"
    assert pipeline_differences(p4info, p4info) == []
    assert {name: t.initial_default for name, t in schema.tables.items()} == {
        name: _contract_default(name) for name in TABLES
    }
