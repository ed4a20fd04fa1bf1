"""Write/read round trips of every entity kind, checked on the wire and in the SwitchState."""

from __future__ import annotations

import grpc
import pytest
from finsy.proto import p4r
from p4runtime_testlib import Client, Running, delete, insert, modify

from netagg.constants import FLOOD_MCAST_GROUP, JOB_MCAST_GROUP_BASE, MAX_JOBS, NUM_JOB_STATS, JobStat
from netagg.softswitch.state import Action

pytestmark = pytest.mark.loopback

WORKER_KEY = (3, 0x0A000002, 40000)
WORKER = {
    "worker_id": 1, "num_workers": 2, "pool_base": 16, "pool_size": 8, "size": 1, "epoch": 9, "port": 2,
    "key": 0xFEED_BEEF,
}  # fmt: skip

#: table -> (key, action, params, modified action, modified params), one row per keyed table of the contract
KEYED = {
    "workers": (WORKER_KEY, "set_worker", WORKER, "set_worker", {**WORKER, "epoch": 10}),
    "results": (
        (3, 1),
        "set_result_dst",
        {"mac": 0x020000000002, "addr": 0x0A000002, "port": 40000, "key": 0xFEED_BEEF},
        "set_result_dst",
        {"mac": 0x020000000003, "addr": 0x0A000003, "port": 40001, "key": 0xFFFF_FFFF},
    ),
    "l2_forward": ((0x020000000002,), "forward", {"port": 2}, "flood", {}),
    "arp_reply": ((0x0A0000FE,), "reply_arp", {"mac": 0x0200000000FE}, "reply_arp", {"mac": 0x0200000000FF}),
    "ingress_loss": ((1,), "set_loss", {"threshold": 1 << 30}, "set_loss", {"threshold": 0}),
    "egress_loss": ((511,), "set_loss", {"threshold": 0xFFFFFFFF}, "set_loss", {"threshold": 1}),
}


@pytest.mark.parametrize("table", sorted(KEYED))
def test_table_entry_round_trip(sw: Running, client: Client, table: str) -> None:
    key, action, params, new_action, new_params = KEYED[table]
    generation = sw.state.generation
    entry = client.table_entry(table, key, action, **params)
    client.write(insert(entry))
    assert sw.state.tables[table].entries == {key: Action(action, params)}
    assert sw.state.generation > generation
    assert client.read(client.table_entry(table)) == [entry]  # reads echo the canonical encoding
    assert client.read(client.table_entry(table, key)) == [entry]

    client.write(modify(client.table_entry(table, key, new_action, **new_params)))
    assert sw.state.tables[table].entries == {key: Action(new_action, new_params)}

    client.write(delete(client.table_entry(table, key)))
    assert sw.state.tables[table].entries == {}
    assert client.read(client.table_entry(table)) == []
    assert client.read(client.table_entry(table, key)) == []


def test_padded_values_are_accepted_and_read_back_canonical(sw: Running, client: Client) -> None:
    padded = client.table_entry(
        "l2_forward", (b"\x00\x00\x02\x00\x00\x00\x00\x07",), "forward", port=b"\x00\x00\x01\x05"
    )
    client.write(insert(padded))
    assert sw.state.tables["l2_forward"].entries == {(0x020000000007,): Action("forward", {"port": 0x105})}
    (read,) = client.read(client.table_entry("l2_forward"))
    assert read == client.table_entry("l2_forward", (0x020000000007,), "forward", port=0x105)
    assert read.table_entry.match[0].exact.value == bytes.fromhex("020000000007")
    assert read.table_entry.action.action.params[0].value == b"\x01\x05"


def test_wildcard_read_over_all_tables(client: Client) -> None:
    entries = [client.table_entry(t, k, a, **p) for t, (k, a, p, _, _) in KEYED.items()]
    client.write(*map(insert, entries))
    read = client.read(p4r.Entity(table_entry=p4r.TableEntry()))

    def key(entity: p4r.Entity) -> bytes:
        return entity.SerializeToString(deterministic=True)

    assert sorted(read, key=key) == sorted(entries, key=key)


def test_controller_metadata_is_echoed(client: Client) -> None:
    entry = client.table_entry("arp_reply", (0x0A000001,), "reply_arp", mac=1)
    entry.table_entry.controller_metadata = 77
    entry.table_entry.metadata = b"job 3"
    client.write(insert(entry))
    assert client.read(client.table_entry("arp_reply")) == [entry]


def test_keyless_agg_addr_default_entry(sw: Running, client: Client) -> None:
    (initial,) = client.read(client.table_entry("agg_addr", default=True))
    assert initial == client.table_entry("agg_addr", (), "set_agg_addr", default=True, mac=0, addr=0)

    mine = client.table_entry(
        "agg_addr", (), "set_agg_addr", default=True, mac=0x02AA00000001, addr=0x0A0000FE
    )
    client.write(modify(mine))
    assert sw.state.tables["agg_addr"].default == Action(
        "set_agg_addr", {"mac": 0x02AA00000001, "addr": 0x0A0000FE}
    )
    assert client.read(client.table_entry("agg_addr", default=True)) == [mine]
    assert client.read(client.table_entry("agg_addr")) == []  # no (non-default) entries in a keyless table

    # A default entry without action restores the program's initial default (P4Runtime 1.3).
    client.write(modify(client.table_entry("agg_addr", default=True)))
    assert sw.state.tables["agg_addr"].default == sw.state.tables["agg_addr"].initial_default
    assert client.read(client.table_entry("agg_addr", default=True)) == [initial]


def test_l2_forward_default_can_change(sw: Running, client: Client) -> None:
    client.write(modify(client.table_entry("l2_forward", (), "forward", default=True, port=4)))
    assert sw.state.tables["l2_forward"].default == Action("forward", {"port": 4})
    client.write(modify(client.table_entry("l2_forward", (), "flood", default=True)))
    assert sw.state.tables["l2_forward"].default == Action("flood")


def test_default_entries_of_all_tables(client: Client) -> None:
    read = client.read(p4r.Entity(table_entry=p4r.TableEntry(is_default_action=True)))
    names = {client.schema.tables_by_id[e.table_entry.table_id].name for e in read}
    assert names == set(client.schema.tables)
    workers = next(e for e in read if e.table_entry.table_id == client.schema.tables["workers"].id)
    assert workers == client.table_entry("workers", (), "NoAction", default=True)  # as BMv2: no is_const


def test_counters_read_all_one_and_write(sw: Running, client: Client) -> None:
    index = 5 * NUM_JOB_STATS + JobStat.COMPLETED
    sw.state.counters["job_stats"].count(index, 1000)
    sw.state.counters["job_stats"].count(index, 500)

    everything = client.read(client.counter_entry("job_stats"))
    assert len(everything) == MAX_JOBS * NUM_JOB_STATS
    assert [e.counter_entry.index.index for e in everything] == list(range(MAX_JOBS * NUM_JOB_STATS))
    (one,) = client.read(client.counter_entry("job_stats", index))
    assert (one.counter_entry.data.packet_count, one.counter_entry.data.byte_count) == (2, 1500)
    assert everything[index] == one

    client.write(modify(client.counter_entry("job_stats", index, packets=7, nbytes=70)))
    assert (sw.state.counters["job_stats"].packets[index], sw.state.counters["job_stats"].bytes[index]) == (
        7,
        70,
    )
    client.write(modify(client.counter_entry("job_stats", index)))  # no data: reset to zero
    assert sw.state.counters["job_stats"].packets[index] == 0
    sw.state.counters["job_stats"].count(index, 10)
    client.write(delete(client.counter_entry("job_stats", index)))  # as BMv2: DELETE resets too
    assert sw.state.counters["job_stats"].packets[index] == 0

    all_counters = client.read(p4r.Entity(counter_entry=p4r.CounterEntry()))
    assert len(all_counters) == sum(c.size for c in client.schema.counters.values())


@pytest.mark.parametrize("as_bytes", [False, True], ids=["egress_port", "port_bytes"])
def test_multicast_group_round_trip(sw: Running, client: Client, as_bytes: bool) -> None:
    job = JOB_MCAST_GROUP_BASE + 3
    flood = client.group_entry(FLOOD_MCAST_GROUP, [(1, 0), (2, 0), (3, 0)], as_bytes)
    workers = client.group_entry(job, [(2, 0), (4, 1)], as_bytes)
    client.write(insert(flood), insert(workers))
    assert sw.state.mcast_groups == {FLOOD_MCAST_GROUP: [(1, 0), (2, 0), (3, 0)], job: [(2, 0), (4, 1)]}
    assert client.read(client.group_entry(0)) == [flood, workers]
    assert client.read(client.group_entry(job)) == [workers]

    bigger = client.group_entry(job, [(2, 0), (4, 1), (5, 2)], as_bytes)
    client.write(modify(bigger))
    assert sw.state.mcast_groups[job] == [(2, 0), (4, 1), (5, 2)]
    assert client.read(client.group_entry(job)) == [bigger]

    client.write(delete(client.group_entry(job)))
    assert job not in sw.state.mcast_groups
    with pytest.raises(grpc.RpcError) as err:
        client.read(client.group_entry(job))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_wildcard_reads_of_absent_kinds_are_empty(client: Client) -> None:
    """finsy's delete_all() reads these wildcards; the program has none of them."""
    clone = p4r.Entity(
        packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
            clone_session_entry=p4r.CloneSessionEntry()
        )
    )
    members = p4r.Entity(action_profile_member=p4r.ActionProfileMember())
    groups = p4r.Entity(action_profile_group=p4r.ActionProfileGroup())
    meters = p4r.Entity(meter_entry=p4r.MeterEntry())
    assert client.read(clone, members, groups, meters) == []


def test_read_sees_a_batch_of_writes(client: Client) -> None:
    entries = [
        client.table_entry("workers", (1, 0x0A000000 + i, 5000), "set_worker", **WORKER) for i in range(300)
    ]
    client.write(*map(insert, entries))
    assert len(client.read(client.table_entry("workers"))) == 300
