"""P4Info schema of a loaded pipeline: names, ids and bitwidths, and the empty ``SwitchState`` it defines.

Objects are named by their P4Info alias (``workers``, ``set_worker``), the short name controllers use; match
fields and action parameters by their P4Info name. The software switch implements exact-match tables with
direct actions only, so a P4Info that needs anything else is refused here with a message naming the object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from finsy.proto import p4i
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from netagg import artifacts

from .codec import EncodingError, decode_uint
from .state import Action, CounterArray, SwitchState, Table

#: The committed P4Info of the netagg program: the only program the software switch accepts.
REFERENCE_P4INFO = artifacts.P4INFO
#: The committed BMv2 JSON of the same program (initial default actions come from it when pushed without one).
REFERENCE_BMV2_JSON = artifacts.BMV2_JSON

#: P4 core's no-op action: the default of tables that name no other.
NO_ACTION = "NoAction"

#: ActionRef scopes (P4Info ``ActionRef.Scope``).
SCOPE_TABLE_AND_DEFAULT = p4i.ActionRef.TABLE_AND_DEFAULT
SCOPE_TABLE_ONLY = p4i.ActionRef.TABLE_ONLY
SCOPE_DEFAULT_ONLY = p4i.ActionRef.DEFAULT_ONLY


class SchemaError(ValueError):
    """A P4Info (or BMv2 JSON) the software switch cannot realize."""


@dataclass(frozen=True, slots=True)
class ParamInfo:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True, slots=True)
class ActionInfo:
    id: int
    name: str
    full_name: str
    params: tuple[ParamInfo, ...]

    def param(self, param_id: int) -> ParamInfo | None:
        for p in self.params:
            if p.id == param_id:
                return p
        return None


@dataclass(frozen=True, slots=True)
class MatchFieldInfo:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True, slots=True)
class TableInfo:
    id: int
    name: str
    full_name: str
    match_fields: tuple[MatchFieldInfo, ...]
    #: action id -> ActionRef scope
    action_scopes: Mapping[int, int]
    #: 0 when the default action may be changed at run time
    const_default_action_id: int
    size: int
    is_const: bool
    initial_default: Action

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(mf.name for mf in self.match_fields)


@dataclass(frozen=True, slots=True)
class CounterInfo:
    id: int
    name: str
    full_name: str
    size: int
    #: P4Info ``CounterSpec.Unit``: which of packets/bytes the counter exposes
    unit: int


def _alias(preamble: p4i.Preamble) -> str:
    return preamble.alias or preamble.name


class P4Schema:
    """Lookups by id and by name over one P4Info, plus the initial default action of every table."""

    def __init__(self, p4info: p4i.P4Info, defaults: Mapping[str, Action] | None = None) -> None:
        """``defaults`` (table name -> action) overrides the initial default actions found in the P4Info."""
        self.p4info = p4info
        self.actions: dict[str, ActionInfo] = {}
        self.actions_by_id: dict[int, ActionInfo] = {}
        for a in p4info.actions:
            info = ActionInfo(
                id=a.preamble.id,
                name=_alias(a.preamble),
                full_name=a.preamble.name,
                params=tuple(ParamInfo(p.id, p.name, p.bitwidth) for p in a.params),
            )
            self._add(self.actions, self.actions_by_id, info, "action")

        self.tables: dict[str, TableInfo] = {}
        self.tables_by_id: dict[int, TableInfo] = {}
        for t in p4info.tables:
            self._add(self.tables, self.tables_by_id, self._table_info(t, defaults or {}), "table")

        self.counters: dict[str, CounterInfo] = {}
        self.counters_by_id: dict[int, CounterInfo] = {}
        for c in p4info.counters:
            if c.size <= 0:
                raise SchemaError(f"counter {_alias(c.preamble)!r} has size {c.size}")
            info = CounterInfo(c.preamble.id, _alias(c.preamble), c.preamble.name, c.size, c.spec.unit)
            self._add(self.counters, self.counters_by_id, info, "counter")

    @staticmethod
    def _add(by_name: dict, by_id: dict, info, kind: str) -> None:  # type: ignore[no-untyped-def]
        if info.id == 0:
            raise SchemaError(f"{kind} {info.name!r} has P4 id 0")
        if info.name in by_name or info.id in by_id:
            raise SchemaError(f"duplicate {kind} {info.name!r} (id {info.id:#x})")
        by_name[info.name] = info
        by_id[info.id] = info

    def _table_info(self, t: p4i.Table, defaults: Mapping[str, Action]) -> TableInfo:
        name = _alias(t.preamble)
        fields = []
        for mf in t.match_fields:
            if mf.match_type != p4i.MatchField.EXACT:
                kind = p4i.MatchField.MatchType.Name(mf.match_type)
                raise SchemaError(f"table {name!r} key {mf.name!r} is {kind}: only exact match is supported")
            fields.append(MatchFieldInfo(mf.id, mf.name, mf.bitwidth))
        if t.implementation_id:
            raise SchemaError(f"table {name!r} uses an action profile: only direct actions are supported")
        scopes = {}
        for ref in t.action_refs:
            if ref.id not in self.actions_by_id:
                raise SchemaError(f"table {name!r} refers to unknown action id {ref.id:#x}")
            scopes[ref.id] = ref.scope
        if t.size < 0:
            raise SchemaError(f"table {name!r} has size {t.size}")
        info = TableInfo(
            id=t.preamble.id,
            name=name,
            full_name=t.preamble.name,
            match_fields=tuple(fields),
            action_scopes=scopes,
            const_default_action_id=t.const_default_action_id,
            size=t.size,
            is_const=t.is_const_table,
            initial_default=Action(NO_ACTION),  # replaced just below
        )
        default = defaults.get(name) or self._p4info_default(t, info)
        self._check_default(info, default)
        return dataclasses.replace(info, initial_default=default)

    def _p4info_default(self, t: p4i.Table, info: TableInfo) -> Action:
        """The table's initial default action as far as the P4Info tells it."""
        call = t.initial_default_action
        if call.action_id:
            action = self._action_of(call.action_id, info.name)
            values = {}
            for arg in call.arguments:
                param = action.param(arg.param_id)
                if param is None:
                    raise SchemaError(
                        f"table {info.name!r}: initial default has unknown param {arg.param_id}"
                    )
                try:
                    values[param.name] = decode_uint(arg.value, param.bitwidth, param.name)
                except EncodingError as exc:
                    raise SchemaError(f"table {info.name!r} initial default: {exc}") from None
            return Action(action.name, values)
        if t.const_default_action_id:
            action = self._action_of(t.const_default_action_id, info.name)
            if action.params:
                raise SchemaError(
                    f"table {info.name!r}: const default {action.name!r} has parameters "
                    "the P4Info does not give"
                )
            return Action(action.name)
        if any(self.actions_by_id[a].name == NO_ACTION for a in info.action_scopes):
            return Action(NO_ACTION)
        raise SchemaError(
            f"table {info.name!r}: the P4Info does not say its default action (push the BMv2 JSON with it)"
        )

    def _action_of(self, action_id: int, table: str) -> ActionInfo:
        action = self.actions_by_id.get(action_id)
        if action is None:
            raise SchemaError(f"table {table!r} refers to unknown action id {action_id:#x}")
        return action

    def _check_default(self, info: TableInfo, default: Action) -> None:
        action = self.actions.get(default.name)
        if action is None or action.id not in info.action_scopes:
            raise SchemaError(
                f"table {info.name!r}: default action {default.name!r} is not one of its actions"
            )
        if set(default.params) != {p.name for p in action.params}:
            raise SchemaError(
                f"table {info.name!r}: default {default.name!r} has params {sorted(default.params)}"
                f", the action takes {[p.name for p in action.params]}"
            )

    def new_state(self) -> SwitchState:
        """An empty ``SwitchState`` for this pipeline."""
        state = SwitchState()
        self.reset_state(state)
        return state

    def reset_state(self, state: SwitchState) -> None:
        """Replace the tables, counters and multicast groups of ``state`` in place (caller holds the lock)."""
        state.tables = {
            t.name: Table(
                name=t.name,
                key_names=t.key_names,
                default=t.initial_default,
                initial_default=t.initial_default,
                size=t.size,
            )
            for t in self.tables.values()
        }
        state.counters = {c.name: CounterArray(c.name, c.size) for c in self.counters.values()}
        state.mcast_groups = {}


def _plain(name: str) -> str:
    return name.removeprefix(".")


def load_p4info(path: Path) -> p4i.P4Info:
    """Read a P4Info file, protobuf text format (``.txtpb``, ``.txt``) or binary."""
    data = path.read_bytes()
    p4info = p4i.P4Info()
    try:
        text_format.Parse(data.decode("utf-8"), p4info)
    except (UnicodeDecodeError, text_format.ParseError) as text_error:
        try:
            p4info.ParseFromString(data)
        except DecodeError:  # report the text error: a text file is the likelier intent
            raise SchemaError(f"{path}: not a P4Info in text or binary format: {text_error}") from None
    return p4info


def defaults_from_bmv2_json(data: bytes, p4info: p4i.P4Info) -> dict[str, Action]:
    """Initial default actions (by table alias) from a BMv2 JSON, matched to the P4Info by full names."""
    try:
        doc = json.loads(data)
        json_actions = {a["id"]: a for a in doc["actions"]}
        json_tables = [t for pipe in doc["pipelines"] for t in pipe["tables"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"device config is not a BMv2 JSON: {exc!r}") from None
    # Names are compared without a leading "." (the P4 source's "global name" marker).
    actions = {_plain(n): a for a in p4info.actions for n in (a.preamble.name, a.preamble.alias)}
    tables = {_plain(t.preamble.name): t for t in p4info.tables}
    defaults: dict[str, Action] = {}
    for jt in json_tables:
        table = tables.get(_plain(jt.get("name") or ""))
        entry = jt.get("default_entry")
        if table is None or not entry:
            continue  # a table the P4Info does not expose (e.g. compiler-generated), or no default given
        ja = json_actions.get(entry.get("action_id"))
        action = actions.get(_plain(ja["name"])) if ja else None
        if action is None:
            raise SchemaError(
                f"BMv2 JSON: default action of table {table.preamble.name!r} is not in the P4Info"
            )
        names = [rd["name"] for rd in ja.get("runtime_data", [])]
        values = entry.get("action_data", [])
        if len(names) != len(values):
            raise SchemaError(
                f"BMv2 JSON: default of table {table.preamble.name!r} has {len(values)} values "
                f"for {len(names)} parameters"
            )
        defaults[_alias(table.preamble)] = Action(
            _alias(action.preamble), {n: int(v, 16) for n, v in zip(names, values, strict=True)}
        )
    return defaults


def pipeline_differences(reference: p4i.P4Info, pushed: p4i.P4Info) -> list[str]:
    """What makes ``pushed`` a different program from ``reference``: tables, actions and counters by name and
    id,
    with their keys, parameters and sizes. Empty when they describe the same program."""
    diffs: list[str] = []

    def by_name(items) -> dict[str, object]:  # type: ignore[no-untyped-def]
        return {_alias(i.preamble): i for i in items}

    def compare(kind: str, ref_items, new_items, detail) -> None:  # type: ignore[no-untyped-def]
        ref, new = by_name(ref_items), by_name(new_items)
        for name in sorted(ref.keys() - new.keys()):
            diffs.append(f"{kind} {name!r} is missing")
        for name in sorted(new.keys() - ref.keys()):
            diffs.append(f"{kind} {name!r} is not in netagg's P4Info")
        for name in sorted(ref.keys() & new.keys()):
            r, n = ref[name], new[name]
            if r.preamble.id != n.preamble.id:
                diffs.append(f"{kind} {name!r} has id {n.preamble.id:#x}, expected {r.preamble.id:#x}")
            diffs.extend(f"{kind} {name!r}: {d}" for d in detail(r, n))

    def fields(items) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
        return [(i.id, i.name, i.bitwidth) for i in items]

    def action_detail(r: p4i.Action, n: p4i.Action) -> list[str]:
        if fields(r.params) != fields(n.params):
            return [f"params {fields(n.params)}, expected {fields(r.params)}"]
        return []

    def table_detail(r: p4i.Table, n: p4i.Table) -> list[str]:
        out = []
        if fields(r.match_fields) != fields(n.match_fields):
            out.append(f"key {fields(n.match_fields)}, expected {fields(r.match_fields)}")
        if sorted(a.id for a in r.action_refs) != sorted(a.id for a in n.action_refs):
            out.append("different actions")
        if r.size != n.size:
            out.append(f"size {n.size}, expected {r.size}")
        return out

    def counter_detail(r: p4i.Counter, n: p4i.Counter) -> list[str]:
        out = []
        if r.size != n.size:
            out.append(f"size {n.size}, expected {r.size}")
        if r.spec.unit != n.spec.unit:
            out.append("different unit")
        return out

    compare("table", reference.tables, pushed.tables, table_detail)
    compare("action", reference.actions, pushed.actions, action_detail)
    compare("counter", reference.counters, pushed.counters, counter_detail)
    return diffs
