"""P4Info schema: names, ids, bitwidths, initial defaults, the empty SwitchState, and program comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finsy.proto import p4i
from google.protobuf import text_format
from p4runtime_testlib import Program, contract_p4info, netagg_program

from netagg.constants import MAX_JOBS, NUM_DROP_REASONS, NUM_JOB_STATS, PORT_BITS
from netagg.softswitch.schema import (
    REFERENCE_BMV2_JSON,
    REFERENCE_P4INFO,
    P4Schema,
    SchemaError,
    defaults_from_bmv2_json,
    load_p4info,
    pipeline_differences,
)
from netagg.softswitch.state import Action, SwitchState

pytestmark = pytest.mark.unit

#: docs/protocol.md, "P4Info names": table -> key (name, bitwidth) in order
CONTRACT_KEYS = {
    "workers": [("job", 8), ("src_addr", 32), ("src_port", 16)],
    "results": [("job", 8), ("worker_id", 8)],
    "agg_addr": [],
    "l2_forward": [("dst_addr", 48)],
    "arp_reply": [("target_addr", 32)],
    "ingress_loss": [("port", PORT_BITS)],
    "egress_loss": [("port", PORT_BITS)],
}
CONTRACT_PARAMS = {
    "set_worker": [
        ("worker_id", 8),
        ("num_workers", 8),
        ("pool_base", 16),
        ("pool_size", 16),
        ("size", 8),
        ("epoch", 16),
        ("port", PORT_BITS),
    ],
    "set_result_dst": [("mac", 48), ("addr", 32), ("port", 16)],
    "set_agg_addr": [("mac", 48), ("addr", 32)],
    "forward": [("port", PORT_BITS)],
    "flood": [],
    "reply_arp": [("mac", 48)],
    "set_loss": [("threshold", 32)],
}
CONTRACT_COUNTERS = {
    "drops": NUM_DROP_REASONS,
    "job_drops": MAX_JOBS * NUM_DROP_REASONS,
    "job_stats": MAX_JOBS * NUM_JOB_STATS,
}


@pytest.fixture
def program(tmp_path: Path) -> Program:
    return netagg_program(tmp_path)


def _schema(program: Program) -> P4Schema:
    return P4Schema(program.p4info, defaults_from_bmv2_json(program.device_config, program.p4info))


def test_contract_names_keys_and_params(program: Program) -> None:
    schema = _schema(program)
    for table, keys in CONTRACT_KEYS.items():
        assert [(mf.name, mf.bitwidth) for mf in schema.tables[table].match_fields] == keys, table
    for action, params in CONTRACT_PARAMS.items():
        assert [(p.name, p.bitwidth) for p in schema.actions[action].params] == params, action
    for counter, size in CONTRACT_COUNTERS.items():
        assert schema.counters[counter].size == size
    for kind, by_name, by_id in [
        ("table", schema.tables, schema.tables_by_id),
        ("action", schema.actions, schema.actions_by_id),
        ("counter", schema.counters, schema.counters_by_id),
    ]:
        assert {i.id: i for i in by_name.values()} == by_id, kind


def test_new_state_has_every_table_and_counter(program: Program) -> None:
    schema = _schema(program)
    state = schema.new_state()
    assert set(state.tables) == set(schema.tables)
    for name, keys in CONTRACT_KEYS.items():
        table = state.tables[name]
        assert table.key_names == tuple(k for k, _ in keys)
        assert table.size == schema.tables[name].size > 0
        assert table.default == table.initial_default
        assert table.entries == {}
    assert state.tables["agg_addr"].default == Action("set_agg_addr", {"mac": 0, "addr": 0})
    assert state.tables["l2_forward"].default == Action("flood")
    assert state.tables["workers"].default == Action("NoAction")
    assert {n: c.size for n, c in state.counters.items()} == CONTRACT_COUNTERS
    assert all(not c.packets.any() and not c.bytes.any() for c in state.counters.values())
    assert state.mcast_groups == {}


def test_reset_state_replaces_contents_in_place(program: Program) -> None:
    schema = _schema(program)
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


def test_initial_defaults_from_p4info_alone() -> None:
    """The P4Info's initial_default_action (P4Runtime 1.4) and const defaults are enough without a JSON."""
    schema = P4Schema(contract_p4info())
    assert schema.tables["agg_addr"].initial_default == Action("set_agg_addr", {"mac": 0, "addr": 0})
    assert schema.tables["l2_forward"].initial_default == Action("flood")
    assert schema.tables["workers"].const_default_action_id == schema.actions["NoAction"].id


def test_default_unknown_without_json_is_refused() -> None:
    p4info = contract_p4info()
    for t in p4info.tables:
        t.ClearField("initial_default_action")
    with pytest.raises(SchemaError, match="agg_addr"):
        P4Schema(p4info)


def test_defaults_from_bmv2_json() -> None:
    p4info = contract_p4info()
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
    assert P4Schema(p4info, defaults).tables["agg_addr"].initial_default == defaults["agg_addr"]
    with pytest.raises(SchemaError, match="BMv2 JSON"):
        defaults_from_bmv2_json(b"{not json", p4info)


def test_default_must_be_an_action_of_the_table() -> None:
    with pytest.raises(SchemaError, match="not one of its actions"):
        P4Schema(contract_p4info(), {"workers": Action("forward", {"port": 1})})
    with pytest.raises(SchemaError, match="params"):
        P4Schema(contract_p4info(), {"agg_addr": Action("set_agg_addr", {"mac": 1})})


def test_refuses_what_the_software_switch_cannot_realize() -> None:
    p4info = contract_p4info()
    p4info.tables[0].match_fields[0].match_type = p4i.MatchField.TERNARY
    with pytest.raises(SchemaError, match="only exact match"):
        P4Schema(p4info)
    p4info = contract_p4info()
    p4info.tables[0].implementation_id = 0x11000001
    with pytest.raises(SchemaError, match="action profile"):
        P4Schema(p4info)
    p4info = contract_p4info()
    p4info.tables[1].preamble.alias = p4info.tables[0].preamble.alias
    with pytest.raises(SchemaError, match="duplicate table"):
        P4Schema(p4info)


def test_load_p4info_text_and_binary(tmp_path: Path) -> None:
    p4info = contract_p4info()
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
    reference = contract_p4info()
    assert pipeline_differences(reference, contract_p4info()) == []

    renamed = contract_p4info()
    renamed.tables[0].preamble.alias = renamed.tables[0].preamble.name = "workerz"
    diffs = pipeline_differences(reference, renamed)
    assert "table 'workers' is missing" in diffs
    assert "table 'workerz' is not in netagg's P4Info" in diffs

    moved = contract_p4info()
    moved.actions[1].preamble.id += 100
    assert any(d.startswith("action 'set_worker' has id") for d in pipeline_differences(reference, moved))

    wider = contract_p4info()
    wider.tables[0].match_fields[0].bitwidth = 16
    assert any(d.startswith("table 'workers': key") for d in pipeline_differences(reference, wider))

    smaller = contract_p4info()
    smaller.counters[0].size = 1
    assert "counter 'drops': size 1, expected 16" in pipeline_differences(reference, smaller)


@pytest.mark.skipif(not REFERENCE_P4INFO.exists(), reason="the P4 program is not compiled yet")
def test_committed_program_is_realizable() -> None:
    p4info = load_p4info(REFERENCE_P4INFO)
    defaults = defaults_from_bmv2_json(REFERENCE_BMV2_JSON.read_bytes(), p4info)
    schema = P4Schema(p4info, defaults)
    assert set(defaults) == set(schema.tables), "the BMv2 JSON names every P4Info table's default"
    assert pipeline_differences(p4info, p4info) == []
    assert set(CONTRACT_KEYS) <= set(schema.tables)
    assert schema.tables["agg_addr"].initial_default == Action("set_agg_addr", {"mac": 0, "addr": 0})
    assert schema.tables["l2_forward"].initial_default == Action("flood")
