"""Helpers for the P4Runtime server tests: the netagg P4Info, a raw gRPC client, entity builders by name.

The tests use the committed P4Info and BMv2 JSON (p4/v1model/build/) when they exist. Until then they use a
P4Info built here from the contract table of docs/protocol.md and the table properties of the P4 source (const
``NoAction`` defaults, keyless ``agg_addr`` defaulting to ``set_agg_addr(0, 0)``, ``l2_forward`` to
``flood``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_status
from google.protobuf import text_format

from netagg.constants import MAX_JOBS, NUM_DROP_REASONS, NUM_JOB_STATS, PORT_BITS
from netagg.softswitch.codec import encode_u128, encode_uint
from netagg.softswitch.p4runtime_server import P4RuntimeServer
from netagg.softswitch.schema import (
    REFERENCE_BMV2_JSON,
    REFERENCE_P4INFO,
    P4Schema,
    defaults_from_bmv2_json,
    load_p4info,
)
from netagg.softswitch.state import SwitchState

DEVICE_ID = 1
#: Every wait in these tests ends after this long with an error.
TIMEOUT_S = 10.0

_SCOPE = {
    "": p4i.ActionRef.TABLE_AND_DEFAULT,
    "table": p4i.ActionRef.TABLE_ONLY,
    "default": p4i.ActionRef.DEFAULT_ONLY,
}

#: name -> params (name, bitwidth), as docs/protocol.md lists them
_ACTIONS: dict[str, list[tuple[str, int]]] = {
    "NoAction": [],
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


@dataclass(frozen=True)
class _TableSpec:
    name: str
    keys: list[tuple[str, int]]
    actions: list[tuple[str, str]]  # (action, scope)
    size: int
    default: tuple[str, dict[str, int]]
    const_default: bool


_TABLES = [
    _TableSpec(
        "workers",
        [("job", 8), ("src_addr", 32), ("src_port", 16)],
        [("set_worker", ""), ("NoAction", "default")],
        8192,
        ("NoAction", {}),
        True,
    ),
    _TableSpec(
        "results",
        [("job", 8), ("worker_id", 8)],
        [("set_result_dst", ""), ("NoAction", "default")],
        8192,
        ("NoAction", {}),
        True,
    ),
    _TableSpec("agg_addr", [], [("set_agg_addr", "")], 1, ("set_agg_addr", {"mac": 0, "addr": 0}), False),
    _TableSpec(
        "l2_forward", [("dst_addr", 48)], [("forward", ""), ("flood", "")], 1024, ("flood", {}), False
    ),
    _TableSpec(
        "arp_reply",
        [("target_addr", 32)],
        [("reply_arp", ""), ("NoAction", "default")],
        256,
        ("NoAction", {}),
        True,
    ),
    _TableSpec(
        "ingress_loss",
        [("port", PORT_BITS)],
        [("set_loss", ""), ("NoAction", "default")],
        1 << PORT_BITS,
        ("NoAction", {}),
        True,
    ),
    _TableSpec(
        "egress_loss",
        [("port", PORT_BITS)],
        [("set_loss", ""), ("NoAction", "default")],
        1 << PORT_BITS,
        ("NoAction", {}),
        True,
    ),
]

_COUNTERS = [
    ("drops", NUM_DROP_REASONS),
    ("job_drops", MAX_JOBS * NUM_DROP_REASONS),
    ("job_stats", MAX_JOBS * NUM_JOB_STATS),
]


def contract_p4info() -> p4i.P4Info:
    """A P4Info for the contract of docs/protocol.md, shaped like p4c's output for the netagg program."""
    info = p4i.P4Info(pkg_info=p4i.PkgInfo(arch="v1model"))
    action_ids = {}
    for i, (name, params) in enumerate(_ACTIONS.items(), start=1):
        action_ids[name] = 0x01000000 | i
        info.actions.add(
            preamble=p4i.Preamble(id=action_ids[name], name=name, alias=name),
            params=[p4i.Action.Param(id=j, name=p, bitwidth=w) for j, (p, w) in enumerate(params, start=1)],
        )
    for i, t in enumerate(_TABLES, start=1):
        default_name, default_params = t.default
        table = info.tables.add(
            preamble=p4i.Preamble(id=0x02000000 | i, name=t.name, alias=t.name),
            match_fields=[
                p4i.MatchField(id=j, name=k, bitwidth=w, match_type=p4i.MatchField.EXACT)
                for j, (k, w) in enumerate(t.keys, start=1)
            ],
            action_refs=[p4i.ActionRef(id=action_ids[a], scope=_SCOPE[s]) for a, s in t.actions],
            size=t.size,
        )
        if t.const_default:
            table.const_default_action_id = action_ids[default_name]
        table.initial_default_action.action_id = action_ids[default_name]
        for j, (p, w) in enumerate(_ACTIONS[default_name], start=1):
            table.initial_default_action.arguments.add(param_id=j, value=encode_uint(default_params[p], w))
    for i, (name, size) in enumerate(_COUNTERS, start=1):
        info.counters.add(
            preamble=p4i.Preamble(id=0x12000000 | i, name=name, alias=name),
            spec=p4i.CounterSpec(unit=p4i.CounterSpec.BOTH),
            size=size,
        )
    return info


def minimal_bmv2_json(p4info: p4i.P4Info, defaults: Mapping[str, tuple[str, dict[str, int]]]) -> bytes:
    """The parts of a BMv2 JSON the server reads: actions, and tables with their default entries."""
    actions = [
        {
            "name": a.preamble.name,
            "id": i,
            "runtime_data": [{"name": p.name, "bitwidth": p.bitwidth} for p in a.params],
        }
        for i, a in enumerate(p4info.actions)
    ]
    json_id = {a["name"]: a["id"] for a in actions}
    tables = []
    for t in p4info.tables:
        action, params = defaults[t.preamble.name]
        tables.append(
            {
                "name": t.preamble.name,
                "default_entry": {
                    "action_id": json_id[action],
                    "action_const": False,
                    "action_data": [hex(v) for v in params.values()],
                    "action_entry_const": False,
                },
            }
        )
    return json.dumps({"actions": actions, "pipelines": [{"name": "ingress", "tables": tables}]}).encode()


@dataclass(frozen=True, eq=False)  # compared and cached by identity
class Program:
    """The P4Info and BMv2 JSON the tests push, and where the server finds its reference copy."""

    p4info: p4i.P4Info
    device_config: bytes
    p4info_path: Path
    bmv2_json_path: Path
    committed: bool

    def config(self, cookie: int | None = None) -> p4r.ForwardingPipelineConfig:
        config = p4r.ForwardingPipelineConfig(p4info=self.p4info, p4_device_config=self.device_config)
        if cookie is not None:
            config.cookie.cookie = cookie
        return config


@functools.cache
def _committed_program() -> Program:
    # Loaded once per test session: the P4Info text and the BMv2 JSON take a noticeable time to parse.
    return Program(
        load_p4info(REFERENCE_P4INFO),
        REFERENCE_BMV2_JSON.read_bytes(),
        REFERENCE_P4INFO,
        REFERENCE_BMV2_JSON,
        committed=True,
    )


def netagg_program(tmp_path: Path) -> Program:
    """The committed program when it exists, else the contract P4Info written under ``tmp_path``."""
    if REFERENCE_P4INFO.exists() and REFERENCE_BMV2_JSON.exists():
        return _committed_program()
    p4info = contract_p4info()
    blob = minimal_bmv2_json(p4info, {t.name: t.default for t in _TABLES})
    p4info_path = tmp_path / "netagg.p4info.txtpb"
    p4info_path.write_text(text_format.MessageToString(p4info))
    json_path = tmp_path / "netagg.json"
    json_path.write_bytes(blob)
    return Program(p4info, blob, p4info_path, json_path, committed=False)


def write_error_details(error: grpc.RpcError) -> list[p4r.Error]:
    """The per-update p4.v1.Error list a failed Write carries in its binary status details."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = rpc_status.Status.FromString(value)
            out = []
            for detail in status.details:
                err = p4r.Error()
                assert detail.Unpack(err), f"detail is not a p4.v1.Error: {detail.type_url}"
                out.append(err)
            return out
    raise AssertionError(f"no binary status details in {error!r}")


class Stream:
    """One StreamChannel, driven synchronously: send requests, receive responses with a deadline."""

    def __init__(self, stub: p4r_grpc.P4RuntimeStub) -> None:
        self._requests: queue.SimpleQueue[p4r.StreamMessageRequest | None] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[p4r.StreamMessageResponse | BaseException | None] = (
            queue.SimpleQueue()
        )
        self._call = stub.StreamChannel(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
            self._responses.put(None)
        except grpc.RpcError as exc:
            self._responses.put(exc)

    def send(self, request: p4r.StreamMessageRequest) -> None:
        self._requests.put(request)

    def arbitrate(self, election_id: int, device_id: int = DEVICE_ID) -> p4r.MasterArbitrationUpdate:
        self.send(
            p4r.StreamMessageRequest(
                arbitration=p4r.MasterArbitrationUpdate(
                    device_id=device_id, election_id=encode_u128(election_id)
                )
            )
        )
        return self.recv().arbitration

    def recv(self, timeout: float = TIMEOUT_S) -> p4r.StreamMessageResponse:
        """The next response; raises the stream's RpcError if it ended with one."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no stream message within {timeout} s") from None
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise AssertionError("stream ended")
        return item

    def expect_nothing(self, timeout: float = 0.3) -> None:
        """Assert that no message arrives within ``timeout`` (used only to check that none is sent at all)."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected stream message {item!r}")

    def close(self) -> None:
        self._requests.put(None)
        self._reader.join(timeout=TIMEOUT_S)
        self._call.cancel()


class Client:
    """A plain gRPC P4Runtime client that builds entities by P4Info name."""

    def __init__(self, address: str, program: Program, device_id: int = DEVICE_ID) -> None:
        # Get of the whole pipeline returns the BMv2 JSON, larger than gRPC's default 4 MB limit.
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT_S)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.program = program
        self.schema = _client_schema(program)
        self.device_id = device_id
        self.election_id = 1
        self._streams: list[Stream] = []

    def close(self) -> None:
        for s in self._streams:
            s.close()
        self.channel.close()

    def stream(self) -> Stream:
        s = Stream(self.stub)
        self._streams.append(s)
        return s

    def become_primary(self, election_id: int = 1) -> Stream:
        s = self.stream()
        update = s.arbitrate(election_id, self.device_id)
        assert update.status.code == 0, update
        self.election_id = election_id
        return s

    # -- RPCs
    def push(
        self,
        config: p4r.ForwardingPipelineConfig | None = None,
        action: int = p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
    ) -> None:
        request = p4r.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, election_id=encode_u128(self.election_id), action=action
        )
        if config is not None:
            request.config.CopyFrom(config)
        self.stub.SetForwardingPipelineConfig(request, timeout=TIMEOUT_S)

    def get_config(self, response_type: int = 0) -> p4r.ForwardingPipelineConfig:
        return self.stub.GetForwardingPipelineConfig(
            p4r.GetForwardingPipelineConfigRequest(device_id=self.device_id, response_type=response_type),
            timeout=TIMEOUT_S,
        ).config

    def write(self, *updates: p4r.Update, election_id: int | None = None) -> None:
        self.stub.Write(
            p4r.WriteRequest(
                device_id=self.device_id,
                election_id=encode_u128(self.election_id if election_id is None else election_id),
                updates=list(updates),
            ),
            timeout=TIMEOUT_S,
        )

    def read(self, *entities: p4r.Entity) -> list[p4r.Entity]:
        responses = self.stub.Read(
            p4r.ReadRequest(device_id=self.device_id, entities=list(entities)), timeout=TIMEOUT_S
        )
        return [e for r in responses for e in r.entities]

    # -- entity builders
    def table_entry(
        self,
        table: str,
        key: Iterable[int | bytes] = (),
        action: str | None = None,
        default: bool = False,
        **params: int | bytes,
    ) -> p4r.Entity:
        t = self.schema.tables[table]
        entry = p4r.TableEntry(table_id=t.id, is_default_action=default)
        for mf, value in zip(t.match_fields, key, strict=False):
            entry.match.add(field_id=mf.id, exact=p4r.FieldMatch.Exact(value=_bytes(value)))
        if action is not None:
            entry.action.action.CopyFrom(self.action(action, **params))
        return p4r.Entity(table_entry=entry)

    def action(self, name: str, **params: int | bytes) -> p4r.Action:
        a = self.schema.actions[name]
        return p4r.Action(
            action_id=a.id,
            params=[
                p4r.Action.Param(param_id=p.id, value=_bytes(params[p.name]))
                for p in a.params
                if p.name in params
            ],
        )

    def counter_entry(
        self, name: str, index: int | None = None, packets: int | None = None, nbytes: int | None = None
    ) -> p4r.Entity:
        entry = p4r.CounterEntry(counter_id=self.schema.counters[name].id)
        if index is not None:
            entry.index.index = index
        if packets is not None or nbytes is not None:
            entry.data.packet_count = packets or 0
            entry.data.byte_count = nbytes or 0
        return p4r.Entity(counter_entry=entry)

    @staticmethod
    def group_entry(gid: int, replicas: Iterable[tuple[int, int]] = (), as_bytes: bool = False) -> p4r.Entity:
        group = p4r.MulticastGroupEntry(multicast_group_id=gid)
        for port, rid in replicas:
            if as_bytes:
                group.replicas.add(port=encode_uint(port), instance=rid)
            else:
                group.replicas.add(egress_port=port, instance=rid)
        return p4r.Entity(
            packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(multicast_group_entry=group)
        )


@functools.cache
def _client_schema(program: Program) -> P4Schema:
    return P4Schema(program.p4info, defaults_from_bmv2_json(program.device_config, program.p4info))


def _bytes(value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else encode_uint(value)


def update(kind: str, entity: p4r.Entity) -> p4r.Update:
    return p4r.Update(type=p4r.Update.Type.Value(kind), entity=entity)


def insert(entity: p4r.Entity) -> p4r.Update:
    return update("INSERT", entity)


def modify(entity: p4r.Entity) -> p4r.Update:
    return update("MODIFY", entity)


def delete(entity: p4r.Entity) -> p4r.Update:
    return update("DELETE", entity)


class PipelineStub:
    """Stands in for the data path: counts register resets."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def codes(errors: Iterable[p4r.Error]) -> list[str]:
    """Canonical code names of per-update errors, for readable assertions."""
    return [_CODE_NAMES[e.canonical_code] for e in errors]


@dataclass
class Running:
    """A started server with what the tests inspect."""

    server: P4RuntimeServer
    state: SwitchState
    pipeline: PipelineStub
    program: Program

    @property
    def address(self) -> str:
        return self.server.bound_address

    def client(self) -> Client:
        return Client(self.address, self.program)


@contextlib.contextmanager
def running_server(tmp_path: Path, address: str = "127.0.0.1:0") -> Iterator[Running]:
    """A P4Runtime server on loopback (port 0) for the netagg program, stopped on exit."""
    program = netagg_program(tmp_path)
    state = SwitchState()
    pipeline = PipelineStub()
    server = P4RuntimeServer(
        state,
        pipeline,
        DEVICE_ID,
        address,
        reference_p4info=program.p4info_path,
        reference_bmv2_json=program.bmv2_json_path,
    )
    server.start()
    try:
        yield Running(server, state, pipeline, program)
    finally:
        server.stop(grace=0)
