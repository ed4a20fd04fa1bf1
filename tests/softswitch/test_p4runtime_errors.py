"""Write validation: every refused update gets its own p4.v1.Error; the valid ones of the batch apply."""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4r
from p4runtime_testlib import (
    Client,
    Running,
    codes,
    delete,
    insert,
    modify,
    update,
    write_error_details,
)

from netagg.constants import FLOOD_MCAST_GROUP
from netagg.softswitch.state import Action

pytestmark = pytest.mark.loopback

WORKER = {
    "worker_id": 1, "num_workers": 2, "pool_base": 0, "pool_size": 8, "size": 0, "epoch": 1, "port": 2, "key": 7,
}  # fmt: skip


def _refused(client: Client, *updates: p4r.Update) -> list[p4r.Error]:
    """Write ``updates``; assert the batch failed as the spec says, and return the per-update errors."""
    with pytest.raises(grpc.RpcError) as err:
        client.write(*updates)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    details = write_error_details(err.value)
    assert len(details) == len(updates)
    return details


def _one(client: Client, bad: p4r.Update) -> p4r.Error:
    (error,) = _refused(client, bad)
    return error


def test_batch_reports_each_update_and_applies_the_valid_ones(sw: Running, client: Client) -> None:
    good_1 = client.table_entry("l2_forward", (0x020000000001,), "forward", port=1)
    good_2 = client.table_entry("l2_forward", (0x020000000002,), "forward", port=2)
    unknown_table = client.table_entry("l2_forward", (0x020000000003,), "forward", port=3)
    unknown_table.table_entry.table_id = 0x02FFFFFF
    errors = _refused(client, insert(good_1), insert(unknown_table), insert(good_2), insert(good_1))
    assert codes(errors) == ["OK", "INVALID_ARGUMENT", "OK", "ALREADY_EXISTS"]
    assert errors[0].message == "" and errors[1].message  # OK entries carry nothing else
    assert set(sw.state.tables["l2_forward"].entries) == {(0x020000000001,), (0x020000000002,)}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("key_too_wide", "does not fit in 48 bits"),
        ("param_too_wide", "does not fit in 9 bits"),
        ("empty_value", "empty byte string"),
        ("missing_key_field", "missing match field(s) ['src_port']"),
        ("unknown_key_field", "no match field id 9"),
        ("not_exact", "is exact, got ternary"),
        ("missing_params", "missing parameter(s) ['epoch', 'port']"),
        ("unknown_param", "has no parameter id 99"),
        ("action_of_other_table", "is not an action of table 'workers'"),
        ("unknown_action", "unknown action id"),
        ("no_action", "action must be set"),
        ("priority", "non-zero priority"),
        ("keyless_insert", "has no key"),
        ("indirect_action", "direct actions only"),
    ],
)
def test_malformed_table_entries_are_invalid_argument(client: Client, case: str, expected: str) -> None:
    c = client
    entries = {
        "key_too_wide": c.table_entry("l2_forward", (1 << 48,), "forward", port=1),
        "param_too_wide": c.table_entry("l2_forward", (1,), "forward", port=512),
        "empty_value": c.table_entry("l2_forward", (b"",), "forward", port=1),
        "missing_key_field": c.table_entry("workers", (1, 2), "set_worker", **WORKER),
        "unknown_key_field": c.table_entry("arp_reply", (1,), "reply_arp", mac=1),
        "not_exact": c.table_entry("arp_reply", (1,), "reply_arp", mac=1),
        "missing_params": c.table_entry(
            "workers",
            (1, 2, 3),
            "set_worker",
            **{k: v for k, v in WORKER.items() if k not in ("epoch", "port")},
        ),
        "unknown_param": c.table_entry("l2_forward", (1,), "forward", port=1),
        "action_of_other_table": c.table_entry("workers", (1, 2, 3), "forward", port=1),
        "unknown_action": c.table_entry("l2_forward", (1,), "forward", port=1),
        "no_action": c.table_entry("l2_forward", (1,)),
        "priority": c.table_entry("l2_forward", (1,), "forward", port=1),
        "keyless_insert": c.table_entry("agg_addr", (), "set_agg_addr", mac=1, addr=1),
        "indirect_action": c.table_entry("l2_forward", (1,)),
    }
    entry = entries[case].table_entry
    if case == "unknown_key_field":
        entry.match[0].field_id = 9
    elif case == "not_exact":
        entry.match[0].ternary.value = b"\x01"
        entry.match[0].ternary.mask = b"\xff"
    elif case == "unknown_param":
        entry.action.action.params.add(param_id=99, value=b"\x01")
    elif case == "unknown_action":
        entry.action.action.action_id = 0x01FFFFFF
    elif case == "priority":
        entry.priority = 10
    elif case == "indirect_action":
        entry.action.action_profile_member_id = 1
    error = _one(client, insert(entries[case]))
    assert codes([error]) == ["INVALID_ARGUMENT"]
    assert expected in error.message


def test_existence_errors(client: Client) -> None:
    entry = client.table_entry("arp_reply", (0x0A000001,), "reply_arp", mac=1)
    client.write(insert(entry))
    other = client.table_entry("arp_reply", (0x0A000002,), "reply_arp", mac=2)
    errors = _refused(client, insert(entry), modify(other), delete(other), update("UNSPECIFIED", entry))
    assert codes(errors) == ["ALREADY_EXISTS", "NOT_FOUND", "NOT_FOUND", "INVALID_ARGUMENT"]


def test_table_full(client: Client) -> None:
    agg_size = client.schema.tables["l2_forward"].size
    client.write(
        *(insert(client.table_entry("l2_forward", (i,), "forward", port=1)) for i in range(agg_size))
    )
    error = _one(client, insert(client.table_entry("l2_forward", (agg_size,), "forward", port=1)))
    assert codes([error]) == ["RESOURCE_EXHAUSTED"]


def test_default_entry_errors(sw: Running, client: Client) -> None:
    set_agg = client.table_entry("agg_addr", (), "set_agg_addr", default=True, mac=1, addr=2)
    const = client.table_entry("workers", (), "NoAction", default=True)
    with_key = client.table_entry("l2_forward", (1,), "flood", default=True)
    table_only = client.table_entry("workers", (), "set_worker", default=True, **WORKER)
    errors = _refused(
        client, insert(set_agg), delete(set_agg), modify(const), modify(with_key), modify(table_only)
    )
    assert codes(errors) == [
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
        "PERMISSION_DENIED",
    ]
    assert sw.state.tables["agg_addr"].default == sw.state.tables["agg_addr"].initial_default


def test_default_only_action_in_an_entry_is_refused(client: Client) -> None:
    error = _one(client, insert(client.table_entry("workers", (1, 2, 3), "NoAction")))
    assert codes([error]) == ["PERMISSION_DENIED"]
    assert "only be the default" in error.message


def test_counter_errors(client: Client) -> None:
    size = client.schema.counters["drops"].size
    unknown = client.counter_entry("drops", 0)
    unknown.counter_entry.counter_id = 0x12FFFFFF
    errors = _refused(
        client,
        modify(client.counter_entry("drops", size)),
        modify(client.counter_entry("drops", -1)),
        modify(client.counter_entry("drops")),
        insert(client.counter_entry("drops", 0)),
        modify(unknown),
        modify(client.counter_entry("drops", 0, packets=-5)),
        modify(client.counter_entry("drops", 1, packets=3)),
    )
    assert codes(errors) == [
        "OUT_OF_RANGE",
        "INVALID_ARGUMENT",
        "UNIMPLEMENTED",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "OK",
    ]


def test_multicast_errors(sw: Running, client: Client) -> None:
    client.write(insert(client.group_entry(FLOOD_MCAST_GROUP, [(1, 0)])))
    no_port = client.group_entry(3, [(1, 0)])
    no_port.packet_replication_engine_entry.multicast_group_entry.replicas[0].ClearField("egress_port")
    clone = p4r.Entity(
        packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
            clone_session_entry=p4r.CloneSessionEntry(session_id=1)
        )
    )
    errors = _refused(
        client,
        insert(client.group_entry(FLOOD_MCAST_GROUP, [(2, 0)])),
        modify(client.group_entry(2, [(2, 0)])),
        delete(client.group_entry(2)),
        insert(client.group_entry(0, [(1, 0)])),
        insert(client.group_entry(1 << 15, [(1, 0)])),
        insert(client.group_entry(3, [(1, 0), (1, 0)])),
        insert(client.group_entry(3, [(512, 0)])),
        insert(client.group_entry(3, [(1, 1 << 16)])),
        insert(no_port),
        insert(clone),
    )
    assert codes(errors) == [
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "OUT_OF_RANGE",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "UNIMPLEMENTED",
    ]
    assert sw.state.mcast_groups == {FLOOD_MCAST_GROUP: [(1, 0)]}


def test_unsupported_entities(client: Client) -> None:
    register = p4r.Entity(register_entry=p4r.RegisterEntry(register_id=0x16000001))
    meter = p4r.Entity(meter_entry=p4r.MeterEntry(meter_id=0x14000001))
    nothing = p4r.Entity()
    errors = _refused(client, modify(register), modify(meter), modify(nothing))
    assert codes(errors) == ["UNIMPLEMENTED", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]


def test_atomic_batches_are_unimplemented(client: Client) -> None:
    request = p4r.WriteRequest(device_id=client.device_id, atomicity=p4r.WriteRequest.ROLLBACK_ON_ERROR)
    request.election_id.low = client.election_id
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Write(request)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_read_errors_end_the_read(client: Client) -> None:
    bad_key = client.table_entry("l2_forward", (1 << 48,))
    unknown_table = p4r.Entity(table_entry=p4r.TableEntry(table_id=0x02FFFFFF))
    out_of_range = client.counter_entry("drops", 10_000)
    for entity, code in [
        (bad_key, grpc.StatusCode.INVALID_ARGUMENT),
        (unknown_table, grpc.StatusCode.INVALID_ARGUMENT),
        (out_of_range, grpc.StatusCode.OUT_OF_RANGE),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            client.read(client.table_entry("workers"), entity)
        assert err.value.code() == code


def test_refused_write_leaves_state_and_generation(sw: Running, client: Client) -> None:
    client.write(modify(client.table_entry("l2_forward", (), "forward", default=True, port=3)))
    generation = sw.state.generation
    _refused(client, insert(client.table_entry("l2_forward", (1,), "forward", port=999)))
    assert sw.state.generation == generation
    assert sw.state.tables["l2_forward"].default == Action("forward", {"port": 3})
