"""P4Runtime entities <-> ``SwitchState``: validation of every write and the encoding of every read.

Semantics follow the P4Runtime v1 specification as BMv2's server (PI) implements it: exact-match table
entries,
table default entries, indirect counters and multicast groups. Each invalid or impossible request raises
``P4RuntimeError`` with the canonical code the specification names; the caller (``p4runtime_server.py``) turns
it into a per-update ``p4.v1.Error`` or an RPC status. The caller holds ``state.lock`` around writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
from finsy.proto import p4i, p4r

from netagg.constants import PORT_BITS

from .codec import EncodingError, decode_uint, encode_uint
from .schema import (
    SCOPE_DEFAULT_ONLY,
    SCOPE_TABLE_ONLY,
    ActionInfo,
    CounterInfo,
    P4Schema,
    TableInfo,
)
from .state import Action, Key, SwitchState

#: Multicast group ids at or above this are reserved by BMv2's server for clone sessions.
FIRST_RESERVED_GROUP_ID = 1 << 15
#: BMv2's replica id (``egress_rid``) is 16 bits.
INSTANCE_BITS = 16


class P4RuntimeError(Exception):
    """A request the server refuses, with the gRPC canonical code to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def _invalid(message: str) -> P4RuntimeError:
    return P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _decode(data: bytes, bitwidth: int, what: str) -> int:
    try:
        return decode_uint(data, bitwidth, what)
    except EncodingError as exc:
        raise _invalid(str(exc)) from None


def _key_str(table: TableInfo, key: Key) -> str:
    """A key as the controller wrote it, e.g. ``(job=0x3, src_addr=0xa000002, src_port=0x9c40)``."""
    return "(" + ", ".join(f"{mf.name}={v:#x}" for mf, v in zip(table.match_fields, key, strict=True)) + ")"


class EntityStore:
    """The P4Runtime view of one pipeline's ``SwitchState``.

    Also keeps what the data path does not need but P4Runtime reads must echo back: the controller's opaque
    metadata on entries and groups, and how each group's replica ports were encoded.
    """

    def __init__(self, schema: P4Schema, state: SwitchState) -> None:
        self.schema = schema
        self.state = state
        #: (table, key) -> (controller_metadata, metadata); default entries under key None
        self._entry_meta: dict[tuple[str, Key | None], tuple[int, bytes]] = {}
        #: group id -> (replica ports as bytes (P4Runtime >= 1.4) rather than uint32, metadata)
        self._group_meta: dict[int, tuple[bool, bytes]] = {}

    # ---------------------------------------------------------------- write

    def write(self, update: p4r.Update) -> None:
        """Apply one update to the state, or raise P4RuntimeError leaving the state unchanged."""
        if update.type == p4r.Update.UNSPECIFIED:
            raise _invalid("update type is not set")
        if update.type not in (p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE):
            raise _invalid(f"invalid update type {update.type}")
        entity = update.entity
        kind = entity.WhichOneof("entity")
        if kind == "table_entry":
            self._write_table_entry(update.type, entity.table_entry)
        elif kind == "counter_entry":
            self._write_counter_entry(update.type, entity.counter_entry)
        elif kind == "packet_replication_engine_entry":
            self._write_pre_entry(update.type, entity.packet_replication_engine_entry)
        elif kind is None:
            raise _invalid("entity has no type set")
        else:
            raise self._unsupported(kind, entity)

    def _unsupported(self, kind: str, entity: p4r.Entity) -> P4RuntimeError:
        """The error for entity kinds the netagg program has no instance of (or the target cannot do)."""
        if kind in ("register_entry", "value_set_entry", "extern_entry"):
            return P4RuntimeError(grpc.StatusCode.UNIMPLEMENTED, f"{kind} writes and reads are not supported")
        if kind == "direct_counter_entry" or kind == "direct_meter_entry":
            return _invalid(f"{kind}: the program's tables have no direct resources")
        return _invalid(f"{kind}: the P4Info has no such object (id {self._entity_id(kind, entity)})")

    @staticmethod
    def _entity_id(kind: str, entity: p4r.Entity) -> int:
        msg = getattr(entity, kind)
        for field in ("action_profile_id", "meter_id", "digest_id"):
            if hasattr(msg, field):
                return getattr(msg, field)
        return 0

    def _table(self, table_id: int) -> TableInfo:
        table = self.schema.tables_by_id.get(table_id)
        if table is None:
            raise _invalid(f"unknown table id {table_id:#x}")
        return table

    def _write_table_entry(self, kind: int, entry: p4r.TableEntry) -> None:
        table = self._table(entry.table_id)
        if table.is_const:
            raise P4RuntimeError(grpc.StatusCode.PERMISSION_DENIED, f"table {table.name!r} is const")
        if entry.HasField("time_since_last_hit"):
            raise _invalid("time_since_last_hit must not be set in a write")
        if entry.idle_timeout_ns:
            raise _invalid(f"table {table.name!r} does not support idle timeout")
        for field in ("meter_config", "counter_data", "meter_counter_data"):
            if entry.HasField(field):
                raise _invalid(f"table {table.name!r} has no direct resources ({field} is set)")
        if entry.priority:
            raise _invalid(f"non-zero priority for table {table.name!r}, which has exact-match keys only")
        if entry.is_default_action:
            self._write_default_entry(kind, table, entry)
            return
        if not table.match_fields:
            raise _invalid(
                f"table {table.name!r} has no key: set its default entry instead "
                "(MODIFY with is_default_action)"
            )
        key = self._key(table, entry.match)
        entries = self.state.tables[table.name].entries
        if kind == p4r.Update.DELETE:
            if key not in entries:
                raise P4RuntimeError(
                    grpc.StatusCode.NOT_FOUND, f"table {table.name!r}: no entry {_key_str(table, key)}"
                )
            del entries[key]
            self._entry_meta.pop((table.name, key), None)
            return
        if not entry.HasField("action"):
            raise _invalid(f"table {table.name!r}: the entry's action must be set")
        action = self._action(table, entry.action, default=False)
        if kind == p4r.Update.INSERT:
            if key in entries:
                raise P4RuntimeError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"table {table.name!r}: entry {_key_str(table, key)} exists (use MODIFY)",
                )
            if table.size > 0 and len(entries) >= table.size:
                raise P4RuntimeError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"table {table.name!r} is full ({table.size} entries)"
                )
        elif key not in entries:
            raise P4RuntimeError(
                grpc.StatusCode.NOT_FOUND, f"table {table.name!r}: no entry {_key_str(table, key)}"
            )
        entries[key] = action  # one assignment: the data path sees the old or the new action
        self._entry_meta[(table.name, key)] = (entry.controller_metadata, entry.metadata)

    def _write_default_entry(self, kind: int, table: TableInfo, entry: p4r.TableEntry) -> None:
        if kind != p4r.Update.MODIFY:
            verb = "INSERT" if kind == p4r.Update.INSERT else "DELETE"
            raise _invalid(f"cannot use {verb} for the default entry of table {table.name!r} (use MODIFY)")
        if entry.match:
            raise _invalid(f"default entry of table {table.name!r} must have an empty key")
        if table.const_default_action_id:
            raise P4RuntimeError(
                grpc.StatusCode.PERMISSION_DENIED, f"table {table.name!r} has a const default action"
            )
        if entry.HasField("action"):
            action = self._action(table, entry.action, default=True)
            self._entry_meta[(table.name, None)] = (entry.controller_metadata, entry.metadata)
        else:  # P4Runtime 1.3: a default entry without action resets it to the program's initial default
            action = table.initial_default
            self._entry_meta.pop((table.name, None), None)
        self.state.tables[table.name].default = action

    def _key(self, table: TableInfo, match: Sequence[p4r.FieldMatch]) -> Key:
        """The int key of a full exact match, in P4Info order."""
        by_id = {mf.id: mf for mf in table.match_fields}
        values: dict[int, int] = {}
        for fm in match:
            mf = by_id.get(fm.field_id)
            if mf is None:
                raise _invalid(f"table {table.name!r} has no match field id {fm.field_id}")
            if fm.field_id in values:
                raise _invalid(f"table {table.name!r}: match field {mf.name!r} given twice")
            if fm.WhichOneof("field_match_type") != "exact":
                raise _invalid(
                    f"table {table.name!r}: match field {mf.name!r} is exact, "
                    f"got {fm.WhichOneof('field_match_type')}"
                )
            values[fm.field_id] = _decode(fm.exact.value, mf.bitwidth, f"match field {mf.name!r}")
        missing = [mf.name for mf in table.match_fields if mf.id not in values]
        if missing:
            raise _invalid(f"table {table.name!r}: missing match field(s) {missing}")
        return tuple(values[mf.id] for mf in table.match_fields)

    def _action(self, table: TableInfo, table_action: p4r.TableAction, *, default: bool) -> Action:
        if table_action.WhichOneof("type") != "action":
            raise _invalid(
                f"table {table.name!r} takes direct actions only, got {table_action.WhichOneof('type')}"
            )
        msg = table_action.action
        action = self.schema.actions_by_id.get(msg.action_id)
        if action is None:
            raise _invalid(f"unknown action id {msg.action_id:#x}")
        scope = table.action_scopes.get(action.id)
        if scope is None:
            raise _invalid(f"action {action.name!r} is not an action of table {table.name!r}")
        if default and scope == SCOPE_TABLE_ONLY:
            raise P4RuntimeError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"action {action.name!r} cannot be the default action of table {table.name!r}",
            )
        if not default and scope == SCOPE_DEFAULT_ONLY:
            raise P4RuntimeError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"action {action.name!r} can only be the default action of table {table.name!r}",
            )
        return Action(action.name, self._params(action, msg.params))

    @staticmethod
    def _params(action: ActionInfo, params: Sequence[p4r.Action.Param]) -> dict[str, int]:
        values: dict[str, int] = {}
        for p in params:
            info = action.param(p.param_id)
            if info is None:
                raise _invalid(f"action {action.name!r} has no parameter id {p.param_id}")
            if info.name in values:
                raise _invalid(f"action {action.name!r}: parameter {info.name!r} given twice")
            values[info.name] = _decode(
                p.value, info.bitwidth, f"action {action.name!r} parameter {info.name!r}"
            )
        missing = [p.name for p in action.params if p.name not in values]
        if missing:
            raise _invalid(f"action {action.name!r}: missing parameter(s) {missing}")
        return values

    def _counter(self, counter_id: int) -> CounterInfo:
        counter = self.schema.counters_by_id.get(counter_id)
        if counter is None:
            raise _invalid(f"unknown counter id {counter_id:#x}")
        return counter

    @staticmethod
    def _index(counter: CounterInfo, entry: p4r.CounterEntry) -> int:
        index = entry.index.index
        if index < 0:
            raise _invalid(f"counter {counter.name!r}: negative index {index}")
        if index >= counter.size:
            raise P4RuntimeError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"counter {counter.name!r}: index {index} >= size {counter.size}",
            )
        return index

    def _write_counter_entry(self, kind: int, entry: p4r.CounterEntry) -> None:
        counter = self._counter(entry.counter_id)
        if not entry.HasField("index"):
            raise P4RuntimeError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"counter {counter.name!r}: wildcard writes (no index) are not supported",
            )
        index = self._index(counter, entry)
        if kind == p4r.Update.INSERT:
            raise _invalid("INSERT is not an update type for counters (use MODIFY)")
        packets, nbytes = entry.data.packet_count, entry.data.byte_count
        if kind == p4r.Update.DELETE:  # as BMv2's server does: DELETE resets the counter
            packets = nbytes = 0
        if packets < 0 or nbytes < 0:
            raise _invalid(f"counter {counter.name!r}: negative counter data")
        array = self.state.counters[counter.name]
        if counter.unit != p4i.CounterSpec.BYTES:
            array.packets[index] = packets
        if counter.unit != p4i.CounterSpec.PACKETS:
            array.bytes[index] = nbytes

    def _write_pre_entry(self, kind: int, entry: p4r.PacketReplicationEngineEntry) -> None:
        which = entry.WhichOneof("type")
        if which == "clone_session_entry":
            raise P4RuntimeError(grpc.StatusCode.UNIMPLEMENTED, "clone sessions are not supported")
        if which != "multicast_group_entry":
            raise _invalid("packet replication engine entry has no type set")
        group = entry.multicast_group_entry
        gid = self._group_id(group.multicast_group_id)
        groups = self.state.mcast_groups
        if kind == p4r.Update.DELETE:
            if gid not in groups:
                raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, f"multicast group {gid} does not exist")
            del groups[gid]
            self._group_meta.pop(gid, None)
            return
        replicas, as_bytes = self._replicas(gid, group.replicas)
        if kind == p4r.Update.INSERT and gid in groups:
            raise P4RuntimeError(grpc.StatusCode.ALREADY_EXISTS, f"multicast group {gid} already exists")
        if kind == p4r.Update.MODIFY and gid not in groups:
            raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, f"multicast group {gid} does not exist")
        groups[gid] = replicas
        self._group_meta[gid] = (as_bytes, group.metadata)

    @staticmethod
    def _group_id(gid: int) -> int:
        if gid == 0:
            raise _invalid("0 is not a valid multicast group id")
        if gid >= FIRST_RESERVED_GROUP_ID:
            raise P4RuntimeError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"multicast group id {gid} >= {FIRST_RESERVED_GROUP_ID} is reserved",
            )
        return gid

    @staticmethod
    def _replicas(gid: int, replicas: Sequence[p4r.Replica]) -> tuple[list[tuple[int, int]], bool]:
        out: list[tuple[int, int]] = []
        kinds = set()
        for r in replicas:
            kind = r.WhichOneof("port_kind")
            if kind is None:
                raise _invalid(f"multicast group {gid}: replica without a port")
            kinds.add(kind)
            port = r.egress_port if kind == "egress_port" else _decode(r.port, PORT_BITS, "replica port")
            if port >= 1 << PORT_BITS:
                raise _invalid(f"multicast group {gid}: port {port} does not fit in {PORT_BITS} bits")
            if r.instance >= 1 << INSTANCE_BITS:
                raise _invalid(
                    f"multicast group {gid}: instance {r.instance} does not fit in {INSTANCE_BITS} bits"
                )
            if r.backup_replicas:
                raise P4RuntimeError(grpc.StatusCode.UNIMPLEMENTED, "backup replicas are not supported")
            if (port, r.instance) in out:
                raise _invalid(
                    f"multicast group {gid}: duplicate replica (port {port}, instance {r.instance})"
                )
            out.append((port, r.instance))
        return out, kinds == {"port"}

    # ----------------------------------------------------------------- read

    def read(self, entity: p4r.Entity) -> Iterator[p4r.Entity]:
        """The entities one read request entity selects (wildcards expanded); validates before yielding."""
        kind = entity.WhichOneof("entity")
        if kind == "table_entry":
            return self._read_table_entries(entity.table_entry)
        if kind == "counter_entry":
            return self._read_counter_entries(entity.counter_entry)
        if kind == "packet_replication_engine_entry":
            return self._read_pre_entries(entity.packet_replication_engine_entry)
        if kind is None:
            raise _invalid("entity has no type set")
        if (
            kind in ("action_profile_member", "action_profile_group", "meter_entry", "digest_entry")
            and self._entity_id(kind, entity) == 0
        ):
            return iter(())  # a wildcard over objects the program does not have: nothing to read
        raise self._unsupported(kind, entity)

    def _read_table_entries(self, req: p4r.TableEntry) -> Iterator[p4r.Entity]:
        if req.table_id == 0:
            if req.match:
                raise _invalid("a key needs a table id")
            tables = list(self.schema.tables.values())
        else:
            tables = [self._table(req.table_id)]
        if req.is_default_action:
            if req.match:
                raise _invalid("default entry of a table has an empty key")
            return iter([self._default_entity(t) for t in tables])
        if req.match:
            table = tables[0]
            key = self._key(table, req.match)
            action = self.state.tables[table.name].entries.get(key)
            return iter([] if action is None else [self._entry_entity(table, key, action)])
        return (
            self._entry_entity(t, key, action)
            for t in tables
            for key, action in list(self.state.tables[t.name].entries.items())
        )

    def _entry_entity(self, table: TableInfo, key: Key, action: Action) -> p4r.Entity:
        cookie, metadata = self._entry_meta.get((table.name, key), (0, b""))
        entry = p4r.TableEntry(
            table_id=table.id,
            match=[
                p4r.FieldMatch(field_id=mf.id, exact=p4r.FieldMatch.Exact(value=encode_uint(v)))
                for mf, v in zip(table.match_fields, key, strict=True)
            ],
            action=self._action_msg(action),
            controller_metadata=cookie,
            metadata=metadata,
        )
        return p4r.Entity(table_entry=entry)

    def _default_entity(self, table: TableInfo) -> p4r.Entity:
        # ``is_const`` stays unset even for const defaults: it is P4Runtime 1.4, and BMv2's 1.3 server omits it.
        cookie, metadata = self._entry_meta.get((table.name, None), (0, b""))
        entry = p4r.TableEntry(
            table_id=table.id,
            is_default_action=True,
            action=self._action_msg(self.state.tables[table.name].default),
            controller_metadata=cookie,
            metadata=metadata,
        )
        return p4r.Entity(table_entry=entry)

    def _action_msg(self, action: Action) -> p4r.TableAction:
        info = self.schema.actions[action.name]
        return p4r.TableAction(
            action=p4r.Action(
                action_id=info.id,
                params=[
                    p4r.Action.Param(param_id=p.id, value=encode_uint(action.params[p.name]))
                    for p in info.params
                ],
            )
        )

    def _read_counter_entries(self, req: p4r.CounterEntry) -> Iterator[p4r.Entity]:
        if req.counter_id == 0:
            counters = list(self.schema.counters.values())
        else:
            counters = [self._counter(req.counter_id)]
        if req.HasField("index"):
            if req.counter_id == 0:
                raise _invalid("an index needs a counter id")
            counter = counters[0]
            return iter([self._counter_entity(counter, self._index(counter, req))])
        return (self._counter_entity(c, i) for c in counters for i in range(c.size))

    def _counter_entity(self, counter: CounterInfo, index: int) -> p4r.Entity:
        array = self.state.counters[counter.name]
        data = p4r.CounterData()
        if counter.unit != p4i.CounterSpec.BYTES:
            data.packet_count = int(array.packets[index])
        if counter.unit != p4i.CounterSpec.PACKETS:
            data.byte_count = int(array.bytes[index])
        return p4r.Entity(
            counter_entry=p4r.CounterEntry(counter_id=counter.id, index=p4r.Index(index=index), data=data)
        )

    def _read_pre_entries(self, req: p4r.PacketReplicationEngineEntry) -> Iterator[p4r.Entity]:
        which = req.WhichOneof("type")
        if which == "clone_session_entry":
            if req.clone_session_entry.session_id == 0:
                return iter(())  # no clone sessions can exist
            raise P4RuntimeError(
                grpc.StatusCode.NOT_FOUND,
                f"clone session {req.clone_session_entry.session_id} does not exist",
            )
        if which != "multicast_group_entry":
            raise _invalid("packet replication engine entry has no type set")
        gid = req.multicast_group_entry.multicast_group_id
        groups = self.state.mcast_groups
        if gid == 0:
            return (self._group_entity(g, r) for g, r in sorted(groups.items()))
        if gid >= FIRST_RESERVED_GROUP_ID:
            raise P4RuntimeError(grpc.StatusCode.OUT_OF_RANGE, f"multicast group id {gid} is reserved")
        if gid not in groups:
            raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, f"multicast group {gid} does not exist")
        return iter([self._group_entity(gid, groups[gid])])

    def _group_entity(self, gid: int, replicas: list[tuple[int, int]]) -> p4r.Entity:
        as_bytes, metadata = self._group_meta.get(gid, (False, b""))
        msgs = [
            p4r.Replica(port=encode_uint(port), instance=rid)
            if as_bytes
            else p4r.Replica(egress_port=port, instance=rid)
            for port, rid in replicas
        ]
        group = p4r.MulticastGroupEntry(multicast_group_id=gid, replicas=msgs, metadata=metadata)
        return p4r.Entity(
            packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(multicast_group_entry=group)
        )
