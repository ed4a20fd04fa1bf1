"""The switch layer against an in-process fake P4Runtime server: the exact write requests, by P4Info name."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import finsy.switch
import pytest
from finsy import P4Schema, P4TableAction, P4TableEntry, P4TableMatch
from finsy.proto import rpc_code
from google.protobuf import text_format
from p4info_contract import committed_p4info

from netagg.constants import FLOOD_MCAST_GROUP, JOB_MCAST_GROUP_BASE
from netagg.controller.epochs import EpochCounter
from netagg.controller.errors import ConfigError, JoinAborted, SwitchError, SwitchUnavailable
from netagg.controller.jobs import Job, JobManager, JoinRequest
from netagg.controller.switch import SwitchConnection, check_p4info, resolve_actions

pytestmark = pytest.mark.unit

IP = {"10.0.0.1": 0x0A000001, "10.0.0.2": 0x0A000002, "10.0.0.3": 0x0A000003, "10.0.0.254": 0x0A0000FE}
MAC = {1: 0x020000000001, 2: 0x020000000002, 3: 0x020000000003, "switch": 0x0200000000FE}

STATIC = [
    ("INSERT", "table", "arp_reply", {"target_addr": IP["10.0.0.254"]}, "reply_arp", {"mac": MAC["switch"]}),
    ("INSERT", "table", "l2_forward", {"dst_addr": MAC[1]}, "forward", {"port": 1}),
    ("INSERT", "table", "l2_forward", {"dst_addr": MAC[2]}, "forward", {"port": 2}),
    ("INSERT", "table", "l2_forward", {"dst_addr": MAC[3]}, "forward", {"port": 3}),
    ("INSERT", "mcast", FLOOD_MCAST_GROUP, [(1, 0), (2, 0), (3, 0)]),
    ("INSERT", "table", "ingress_loss", {"port": 2}, "set_loss", {"threshold": 2**30}),
    ("INSERT", "table", "egress_loss", {"port": 2}, "set_loss", {"threshold": 2**32 - 1}),
    ("MODIFY", "table", "agg_addr(default)", {}, "set_agg_addr", {"mac": MAC["switch"], "addr": IP["10.0.0.254"]}),
]


@pytest.fixture(autouse=True)
def fast_finsy_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # finsy waits 10 s before reconnecting when a connection lived less than 2 s; tests restart switches sooner.
    monkeypatch.setattr(finsy.switch, "_FAIL_THROTTLE_SECS", 0.2)


@pytest.fixture
def connection(fake_switch, make_topo, pipeline) -> Iterator[SwitchConnection]:
    conn = SwitchConnection(make_topo(fake_switch.address), *pipeline, call_timeout=10.0)
    conn.start(timeout=10.0)
    yield conn
    conn.stop()


@pytest.fixture
def manager(connection: SwitchConnection) -> JobManager:
    """The job manager driving the connection, sharing its epoch counter (as the controller wires them)."""
    return JobManager(connection.topology, connection, epochs=connection.epochs)


def admit(manager: JobManager, name: str = "j", slots: int = 8) -> Job:
    """Admit a two-worker job (ranks on h1 and h2); a refusal raises the error of the rank that met it."""
    results: dict[int, Any] = {}

    def join(rank: int) -> None:
        try:
            results[rank] = manager.join(JoinRequest(name, 2, rank, f"10.0.0.{rank + 1}", 5000 + rank, lanes=128,
                                                     slots=slots, timeout=10))
        except Exception as ex:  # noqa: BLE001 - re-raised below
            results[rank] = ex

    threads = [threading.Thread(target=join, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    # The rank that arrived last met the failure; the other one was told its join was abandoned.
    errors = sorted((r for r in results.values() if isinstance(r, Exception)), key=lambda e: isinstance(e, JoinAborted))
    if errors:
        raise errors[0]
    assert results[0].job == results[1].job
    return results[0].job


def leave(manager: JobManager, job: Job) -> None:
    for rank in range(job.world_size):
        manager.leave(job.name, rank)


def job_updates(kind: str, job: Job) -> list[tuple]:
    """What installing (kind INSERT) or deleting (DELETE) the two-worker job must write."""
    jid = job.job_id
    if kind == "INSERT":
        workers = [
            ("INSERT", "table", "workers", {"job": jid, "src_addr": IP[f"10.0.0.{r + 1}"], "src_port": 5000 + r},
             "set_worker", {"worker_id": r, "num_workers": 2, "pool_base": job.pool.base, "pool_size": 8,
                            "size": 2, "epoch": job.epoch, "port": r + 1, "key": job.workers[r].key})
            for r in range(2)
        ]
        results = [
            ("INSERT", "table", "results", {"job": jid, "worker_id": r}, "set_result_dst",
             {"mac": MAC[r + 1], "addr": IP[f"10.0.0.{r + 1}"], "port": 5000 + r, "key": job.workers[r].key})
            for r in range(2)
        ]
        return workers + results + [("INSERT", "mcast", JOB_MCAST_GROUP_BASE + jid, [(1, 0), (2, 1)])]
    workers = [("DELETE", "table", "workers", {"job": jid, "src_addr": IP[f"10.0.0.{r + 1}"], "src_port": 5000 + r},
                None, {}) for r in range(2)]
    results = [("DELETE", "table", "results", {"job": jid, "worker_id": r}, None, {}) for r in range(2)]
    return workers + results + [("DELETE", "mcast", JOB_MCAST_GROUP_BASE + jid, [])]


def test_start_pushes_pipeline_and_installs_static_state(connection, fake_switch, schema) -> None:
    assert fake_switch.pipeline_pushes == 1
    assert fake_switch.updates(schema) == STATIC
    # Every write carries this controller's device and election id.
    assert {(w.device_id, w.election_id.low) for w in fake_switch.writes} == {(1, 10)}


def test_start_pushes_even_when_the_switch_runs_the_pipeline(fake_switch, make_topo, pipeline) -> None:
    # A previous controller left its pipeline (and register state) behind: this one must reset it.
    for expected_pushes in (1, 2):
        conn = SwitchConnection(make_topo(fake_switch.address), *pipeline)
        conn.start(timeout=10.0)
        conn.stop()
        assert fake_switch.pipeline_pushes == expected_pushes


def test_groups_left_behind_are_deleted_before_the_push(fake_switch, make_topo, pipeline, schema) -> None:
    # BMv2 keeps multicast groups across a pipeline push (its P4Runtime server forgets them): a second
    # controller must delete what the first left, or every replica is doubled once it re-inserts the groups.
    first = SwitchConnection(make_topo(fake_switch.address), *pipeline)
    first.start(timeout=10.0)
    first.stop()
    start = fake_switch.write_count()
    second = SwitchConnection(make_topo(fake_switch.address), *pipeline)
    second.start(timeout=10.0)
    try:
        deletes = fake_switch.updates(schema, start)[:1]
        assert [(kind, what, group) for kind, what, group, *_ in deletes] == [("DELETE", "mcast", FLOOD_MCAST_GROUP)]
        assert fake_switch.pipeline_pushes == 2
    finally:
        second.stop()


def test_job_admission_and_teardown_writes(manager, fake_switch, schema) -> None:
    start = fake_switch.write_count()
    job = admit(manager)
    assert fake_switch.updates(schema, start) == job_updates("INSERT", job)
    keys = [w.key for w in job.workers]
    assert 0 not in keys and len(set(keys)) == 2
    start = fake_switch.write_count()
    leave(manager, job)
    assert fake_switch.updates(schema, start) == job_updates("DELETE", job)
    assert fake_switch.table_entries(schema, "workers") == []
    # The same ranks admitted again form a new job: new keys, a new epoch.
    start = fake_switch.write_count()
    again = admit(manager)
    assert fake_switch.updates(schema, start) == job_updates("INSERT", again)
    assert not {w.key for w in again.workers} & set(keys) and again.epoch > job.epoch


def test_write_errors_are_translated_with_details(manager, fake_switch) -> None:
    fake_switch.fail_writes_with = rpc_code.RESOURCE_EXHAUSTED
    with pytest.raises(SwitchError) as info:
        admit(manager)
    error = info.value
    assert error.code == "UNKNOWN" and error.operation == "insert"
    assert len(error.details) == 5
    assert error.details[0].code == "RESOURCE_EXHAUSTED"
    assert "table workers" in error.details[0].update and "set_worker" in error.details[0].update
    assert "set_result_dst" in error.details[2].update
    assert "multicast group" in error.details[4].update
    # The workers' keys are secrets: the error (which the join answer carries) says only that one was set.
    assert "'key': '<secret>'" in error.details[0].update and "'key': '<secret>'" in error.details[2].update
    assert "'epoch': 1" in error.details[0].update


def test_switch_restart_reinstalls_static_state_and_jobs(manager, connection, fake_switch, fake_switch_class,
                                                         schema) -> None:
    job = admit(manager)
    port, before = fake_switch.port, connection.ready_count
    fake_switch.stop()
    restarted = fake_switch_class(port)  # an empty switch: no pipeline, no entries
    try:
        restarted.wait_writes(2, timeout=20)
        connection.wait_ready(20)
        _wait(lambda: connection.ready_count > before)
        assert restarted.pipeline_pushes == 1
        # The job is back as it was admitted: same epoch, and the keys its workers were given.
        inserted = sorted(map(repr, restarted.updates(schema)))
        assert inserted == sorted(map(repr, STATIC[:-1] + job_updates("INSERT", job) + STATIC[-1:]))
    finally:
        restarted.stop()


def test_dropped_connection_reconciles_without_duplicates(manager, connection, fake_switch, fake_switch_class,
                                                          schema) -> None:
    job = admit(manager)
    port, before = fake_switch.port, connection.ready_count
    fake_switch.stop()
    same = fake_switch_class(port, state_from=fake_switch)  # the switch kept running: same pipeline, entries
    try:
        _wait(lambda: connection.ready_count > before)
        assert same.pipeline_pushes == 0
        updates = same.updates(schema)
        assert {u[0] for u in updates} == {"INSERT", "MODIFY"}
        # Everything already there was rewritten with MODIFY; nothing is missing or doubled.
        assert len(same.table_entries(schema, "workers")) == 2
        assert len(same.table_entries(schema, "l2_forward")) == 3
        # A job removed after the reconnect is deleted from the switch.
        leave(manager, job)
        assert same.table_entries(schema, "workers") == []
    finally:
        same.stop()


def test_teardown_while_disconnected_is_applied_on_reconnect(manager, connection, fake_switch, fake_switch_class,
                                                             schema):
    job = admit(manager)
    port = fake_switch.port
    fake_switch.stop()
    _wait(lambda: not connection.is_ready)
    with pytest.raises(SwitchUnavailable):
        admit(manager, name="other")
    leave(manager, job)  # the switch is unreachable: the delete is queued
    same = fake_switch_class(port, state_from=fake_switch)
    try:
        connection.wait_ready(20)
        _wait(lambda: same.table_entries(schema, "workers") == [])
        assert same.table_entries(schema, "results") == []
    finally:
        same.stop()


def test_counter_reads(connection, fake_switch, schema) -> None:
    fake_switch.set_counter(schema, "drops", 3, 7, 700)
    fake_switch.set_counter(schema, "drops", 9, 2, 200)
    assert connection.read_counter("drops") == {3: (7, 700), 9: (2, 200)}
    assert connection.read_counter("drops", [9, 4]) == {9: (2, 200), 4: (0, 0)}


def _wait(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        tick.wait(0.02)


def test_a_clean_stop_is_quiet(fake_switch, make_topo, pipeline, caplog: pytest.LogCaptureFixture) -> None:
    conn = SwitchConnection(make_topo(fake_switch.address), *pipeline)
    conn.start(timeout=10.0)
    assert conn._loop is not None
    # Something still running on the client's loop when it stops (gRPC's bookkeeping of a cancelled call, a
    # request another thread just sent) must be ended, not destroyed pending with the loop.
    straggler = asyncio.run_coroutine_threadsafe(asyncio.sleep(3600), conn._loop)
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # from here on: the stop alone
    conn.stop()
    assert straggler.cancelled()
    del straggler
    gc.collect()  # a pending task is reported when it is collected
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert f"P4Runtime connection to {fake_switch.address} closed" in caplog.messages


def test_start_fails_clearly_when_the_switch_refuses_the_static_state(fake_switch, make_topo, pipeline) -> None:
    fake_switch.fail_writes_with = rpc_code.INVALID_ARGUMENT
    conn = SwitchConnection(make_topo(fake_switch.address), *pipeline)
    with pytest.raises(SwitchUnavailable, match=r"(?s)did not become ready.*INVALID_ARGUMENT: injected failure"):
        conn.start(timeout=1.0)


def test_start_fails_clearly_when_nothing_listens(make_topo, pipeline) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    conn = SwitchConnection(make_topo(address), *pipeline)
    with pytest.raises(SwitchUnavailable, match=f"cannot push the pipeline to {address} within 0.5 s: UNAVAILABLE"):
        conn.start(timeout=0.5)


def test_start_reports_a_refused_pipeline(fake_switch, make_topo, pipeline) -> None:
    fake_switch.refuse_pipeline = "this switch runs only the netagg program"
    conn = SwitchConnection(make_topo(fake_switch.address), *pipeline)
    with pytest.raises(SwitchError, match="push pipeline failed: INVALID_ARGUMENT: this switch runs only"):
        conn.start(timeout=5.0)


def test_actions_are_resolved_within_their_table() -> None:
    info = committed_p4info()
    for action in info.actions:  # a compiler that qualifies the name: full name differs from the alias
        if action.preamble.alias == "set_loss":
            action.preamble.name, action.preamble.alias = "top.Ingress.set_loss", "Ingress.set_loss"
    schema = P4Schema(info)
    entry = P4TableEntry("ingress_loss", match=P4TableMatch(port=1), action=P4TableAction("set_loss", threshold=1))
    (resolved,) = resolve_actions([entry], schema)
    assert resolved.action.name == "Ingress.set_loss"
    resolved.encode(schema)  # encodes without a lookup error


def test_a_pipeline_of_another_wire_version_is_refused_at_start(fake_switch, make_topo, make_p4info, pipeline,
                                                                 tmp_path) -> None:
    check_p4info(P4Schema(make_p4info()))  # the contract itself passes
    info = make_p4info()  # the v1 pipeline: a 16-bit epoch, no keys
    for action in info.actions:
        if action.preamble.name in ("set_worker", "set_result_dst"):
            kept = [p for p in action.params if p.name != "key"]
            for p in kept:
                if p.name == "epoch":
                    p.bitwidth = 16
            del action.params[:]
            action.params.extend(kept)
    path = tmp_path / "v1.p4info.txtpb"
    path.write_text(text_format.MessageToString(info))
    conn = SwitchConnection(make_topo(fake_switch.address), path, pipeline[1])
    with pytest.raises(ConfigError) as raised:
        conn.start(timeout=5.0)
    text = str(raised.value)
    assert "\n" not in text
    for words in ("set_worker parameter epoch is 16 bits, not 32", "set_worker lacks parameter key (32 bits)",
                  "set_result_dst lacks parameter key (32 bits)", "make -C p4"):
        assert words in text
    assert fake_switch.pipeline_pushes == 0 and fake_switch.write_count() == 0


def test_start_refuses_to_program_when_another_controller_is_primary(fake_switch, make_topo, pipeline) -> None:
    fake_switch.other_primary = 100
    conn = SwitchConnection(make_topo(fake_switch.address), *pipeline)
    with pytest.raises(SwitchError, match="election id 10 did not make this controller primary"):
        conn.start(timeout=5.0)
    assert fake_switch.pipeline_pushes == 0 and fake_switch.write_count() == 0


# --- epochs and pipeline pushes --------------------------------------------------------------------------------


def test_the_push_at_start_restarts_the_epochs(fake_switch, make_topo, pipeline) -> None:
    # Whatever was handed out before, the push at start zeroed every register: epochs start at 1 again.
    epochs = EpochCounter(last=1000)
    conn = SwitchConnection(make_topo(fake_switch.address), *pipeline, epochs=epochs)
    conn.start(timeout=10.0)
    try:
        assert fake_switch.pipeline_pushes == 1 and epochs.last == 0
        assert admit(JobManager(conn.topology, conn, epochs=epochs)).epoch == 1
    finally:
        conn.stop()


def test_a_reconnection_without_a_push_never_restarts_the_epochs(manager, connection, fake_switch,
                                                                 fake_switch_class) -> None:
    first = admit(manager)
    leave(manager, first)
    port, before = fake_switch.port, connection.ready_count
    fake_switch.stop()
    # The switch kept its pipeline, so its registers: copies of the range may still hold the first job's epoch.
    # Its entries are gone (deleted by hand), so the re-install finds it empty; still, nobody pushed.
    same = fake_switch_class(port, state_from=fake_switch, keep_entries=False)
    try:
        _wait(lambda: connection.ready_count > before and connection.is_ready)
        assert same.pipeline_pushes == 0
        second = admit(manager)
        assert second.pool == first.pool and second.epoch == first.epoch + 1
    finally:
        same.stop()


def test_a_push_on_reconnection_restarts_the_epochs_above_the_live_jobs(manager, connection, fake_switch,
                                                                        fake_switch_class) -> None:
    a, b, c = admit(manager, "a"), admit(manager, "b"), admit(manager, "c")
    assert (a.epoch, b.epoch, c.epoch) == (1, 2, 3)
    leave(manager, b)
    leave(manager, c)
    port, before = fake_switch.port, connection.ready_count
    fake_switch.stop()
    restarted = fake_switch_class(port)  # a restarted switch: no pipeline, so finsy pushes it
    try:
        _wait(lambda: connection.ready_count > before and connection.is_ready)
        assert restarted.pipeline_pushes == 1
        # Every register is zero, but "a" is back with epoch 1 and writes it into its copies again: the counter
        # restarts just above it (not at 1, not at 4).
        assert connection.epochs.last == a.epoch
        d = admit(manager, "d")
        assert d.epoch == a.epoch + 1
        leave(manager, a)
        leave(manager, d)
        # With no job left, the next push would restart at 1; without one the counter keeps growing.
        assert admit(manager, "e").epoch == d.epoch + 1
    finally:
        restarted.stop()
