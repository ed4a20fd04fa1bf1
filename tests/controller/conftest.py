"""Fixtures for the controller tests: the P4 pipeline, a fake in-process P4Runtime server, topologies.

The fake server's tests use the P4Info of the contract (``p4info_contract.ACTIONS``): the committed P4Info with
every contract action's parameters set to the contract's names and widths. Once the committed P4Info is compiled
from the current program the two are the same; until then the controller is tested against the contract.

The fake server implements just enough of P4Runtime for the controller: arbitration, capabilities,
Get/SetForwardingPipelineConfig (with the cookie), Write (recording every WriteRequest, keeping a store so
duplicate INSERTs and missing DELETEs fail per update like a real switch), and Read of counters (values set by the
test) and table entries. Writes are described by P4Info *names*, so assertions never depend on numeric ids.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from finsy import P4Schema
from finsy.proto import p4i, p4r, p4r_grpc, rpc_code, rpc_status
from google.protobuf import any_pb2, text_format
from p4info_contract import ACTIONS, BMV2_JSON_PATH, P4INFO_PATH, committed_p4info

from netagg.controller.topology import Topology, parse_topology


def contract_p4info() -> p4i.P4Info:
    """The committed P4Info with the contract's parameters (names, order, widths) on every contract action."""
    info = committed_p4info()
    for action in info.actions:
        params = ACTIONS.get(_short(action.preamble.name))
        if params is None:
            continue
        existing = {p.name: p.id for p in action.params}
        next_id = max(existing.values(), default=0) + 1
        wanted = []
        for name, width in params:
            if name not in existing:
                existing[name], next_id = next_id, next_id + 1
            wanted.append(p4i.Action.Param(id=existing[name], name=name, bitwidth=width))
        del action.params[:]
        action.params.extend(wanted)
    return info


@pytest.fixture
def make_p4info() -> Any:
    """make_p4info() -> a fresh copy of the contract's P4Info, for a test to change."""
    return contract_p4info


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(P4Info, BMv2 JSON) for the fake switch: the contract's P4Info, the committed BMv2 JSON."""
    path = tmp_path_factory.mktemp("pipeline") / "netagg.p4info.txtpb"
    path.write_text(text_format.MessageToString(contract_p4info()))
    return path, BMV2_JSON_PATH


@pytest.fixture(scope="session")
def committed_pipeline() -> tuple[Path, Path]:
    """(P4Info, BMv2 JSON): the committed artifacts of the P4 program, for tests against a real switch."""
    return P4INFO_PATH, BMV2_JSON_PATH


@pytest.fixture(scope="session")
def schema(pipeline: tuple[Path, Path]) -> P4Schema:
    return P4Schema(pipeline[0], pipeline[1])


# --- describing writes by name ---------------------------------------------------------------------------------

_UPDATE_TYPES = {p4r.Update.INSERT: "INSERT", p4r.Update.MODIFY: "MODIFY", p4r.Update.DELETE: "DELETE"}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def describe_update(update: p4r.Update, schema: P4Schema) -> tuple[Any, ...]:
    """An update as (type, kind, name, key dict, action name, params dict), names resolved through the P4Info."""
    kind = _UPDATE_TYPES[update.type]
    entity = update.entity
    if entity.HasField("table_entry"):
        te = entity.table_entry
        table = schema.tables[te.table_id]
        key = {}
        for m in te.match:
            key[table.match_fields[m.field_id].name] = int.from_bytes(m.exact.value, "big")
        action_name, params = None, {}
        if te.HasField("action"):
            action = schema.actions[te.action.action.action_id]
            action_name = _short(action.name)
            params = {action.params[p.param_id].name: int.from_bytes(p.value, "big") for p in te.action.action.params}
        name = table.alias if not te.is_default_action else table.alias + "(default)"
        return (kind, "table", name, key, action_name, params)
    if entity.HasField("packet_replication_engine_entry"):
        group = entity.packet_replication_engine_entry.multicast_group_entry
        replicas = sorted(
            (int.from_bytes(r.port, "big") if r.HasField("port") else r.egress_port, r.instance)
            for r in group.replicas
        )
        return (kind, "mcast", group.multicast_group_id, replicas)
    raise AssertionError(f"unexpected entity {entity}")


# --- the fake server -----------------------------------------------------------------------------------------


def _entity_key(entity: p4r.Entity) -> bytes:
    """What identifies an entity on the switch (table + match, or group id)."""
    if entity.HasField("table_entry"):
        te = p4r.TableEntry()
        te.CopyFrom(entity.table_entry)
        te.ClearField("action")
        return b"T" + te.SerializeToString(deterministic=True)
    group = entity.packet_replication_engine_entry.multicast_group_entry
    return b"M" + group.multicast_group_id.to_bytes(4, "big")


class FakeP4Runtime(p4r_grpc.P4RuntimeServicer):
    """In-process P4Runtime server on 127.0.0.1 (port 0 picks a free port; a restart may reuse it)."""

    def __init__(self, port: int = 0, api_version: str = "1.3.0", state_from: FakeP4Runtime | None = None,
                 keep_entries: bool = True) -> None:
        self._lock = threading.Condition()
        self.api_version = api_version
        self.writes: list[p4r.WriteRequest] = []
        self.entities: dict[bytes, p4r.Entity] = {}
        self.defaults: dict[int, p4r.TableEntry] = {}
        self.counters: dict[tuple[int, int], tuple[int, int]] = {}  # (counter id, index) -> (packets, bytes)
        self.config: p4r.ForwardingPipelineConfig | None = None
        self.pipeline_pushes = 0
        self.fail_writes_with: int | None = None  # a gRPC code every update fails with, when set
        self.refuse_pipeline: str | None = None  # SetForwardingPipelineConfig fails with this message, when set
        self.other_primary: int | None = None  # election id of another (simulated) primary controller
        if state_from is not None:  # the same switch, still running its pipeline, after a dropped connection
            self.config = state_from.config
            # keep_entries=False: someone deleted the entries meanwhile, without pushing (registers kept).
            self.entities = dict(state_from.entities) if keep_entries else {}
            self.defaults = dict(state_from.defaults)
            self.counters = dict(state_from.counters)
        # A BMv2 JSON is several MB: accept large messages, as real P4Runtime servers do.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                  options=[("grpc.max_receive_message_length", 64 << 20)])
        p4r_grpc.add_P4RuntimeServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)

    # -- helpers for tests --

    def updates(self, schema: P4Schema, start: int = 0) -> list[tuple[Any, ...]]:
        """Every update written since write request ``start``, described by name."""
        with self._lock:
            return [describe_update(u, schema) for w in self.writes[start:] for u in w.updates]

    def write_count(self) -> int:
        with self._lock:
            return len(self.writes)

    def wait_writes(self, count: int, timeout: float = 10.0) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.writes) >= count, timeout):
                raise AssertionError(f"fake switch got {len(self.writes)} write requests, expected {count}")

    def set_counter(self, schema: P4Schema, name: str, index: int, packets: int, nbytes: int = 0) -> None:
        with self._lock:
            self.counters[(schema.counters[name].id, index)] = (packets, nbytes)

    def table_entries(self, schema: P4Schema, table: str) -> list[p4r.TableEntry]:
        table_id = schema.tables[table].id
        with self._lock:
            return [e.table_entry for e in self.entities.values()
                    if e.HasField("table_entry") and e.table_entry.table_id == table_id]

    # -- P4Runtime --

    def StreamChannel(self, request_iterator: Iterator[p4r.StreamMessageRequest], context: Any) -> Iterator[Any]:
        for request in request_iterator:
            if request.HasField("arbitration"):
                reply = p4r.MasterArbitrationUpdate()
                reply.CopyFrom(request.arbitration)
                reply.status.code = rpc_code.OK
                if self.other_primary is not None and request.arbitration.election_id.low < self.other_primary:
                    reply.election_id.low = self.other_primary
                    reply.status.code = rpc_code.ALREADY_EXISTS
                yield p4r.StreamMessageResponse(arbitration=reply)

    def Capabilities(self, request: Any, context: Any) -> p4r.CapabilitiesResponse:
        return p4r.CapabilitiesResponse(p4runtime_api_version=self.api_version)

    def GetForwardingPipelineConfig(self, request: Any, context: Any) -> p4r.GetForwardingPipelineConfigResponse:
        with self._lock:
            if self.config is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "No forwarding pipeline config set for this device")
            reply = p4r.GetForwardingPipelineConfigResponse()
            reply.config.cookie.CopyFrom(self.config.cookie)
            if request.response_type != p4r.GetForwardingPipelineConfigRequest.COOKIE_ONLY:
                reply.config.p4info.CopyFrom(self.config.p4info)
            return reply

    def SetForwardingPipelineConfig(self, request: Any, context: Any) -> p4r.SetForwardingPipelineConfigResponse:
        if self.refuse_pipeline is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refuse_pipeline)
        with self._lock:
            self.config = request.config
            self.pipeline_pushes += 1
            # A new pipeline starts empty, as on a real switch.
            self.entities.clear()
            self.defaults.clear()
            self.counters.clear()
            return p4r.SetForwardingPipelineConfigResponse()

    def Write(self, request: p4r.WriteRequest, context: Any) -> p4r.WriteResponse:
        with self._lock:
            self.writes.append(request)
            self._lock.notify_all()
            errors = [self._apply(update) for update in request.updates]
        if any(code != rpc_code.OK for code, _ in errors):
            status = rpc_status.Status(code=rpc_code.UNKNOWN, message="Write failure.")
            for code, message in errors:
                detail = any_pb2.Any()
                detail.Pack(p4r.Error(canonical_code=code, message=message, space="fake"))
                status.details.append(detail)
            context.set_trailing_metadata([("grpc-status-details-bin", status.SerializeToString())])
            context.abort(grpc.StatusCode.UNKNOWN, "Write failure.")
        return p4r.WriteResponse()

    def _apply(self, update: p4r.Update) -> tuple[int, str]:
        if self.fail_writes_with is not None:
            return self.fail_writes_with, "injected failure"
        entity = update.entity
        if entity.HasField("table_entry") and entity.table_entry.is_default_action:
            self.defaults[entity.table_entry.table_id] = entity.table_entry
            return rpc_code.OK, ""
        key = _entity_key(entity)
        if update.type == p4r.Update.INSERT:
            if key in self.entities:
                return rpc_code.ALREADY_EXISTS, "Match entry exists"
            self.entities[key] = entity
        elif update.type == p4r.Update.MODIFY:
            if key not in self.entities:
                return rpc_code.NOT_FOUND, "Entry not found"
            self.entities[key] = entity
        elif update.type == p4r.Update.DELETE and self.entities.pop(key, None) is None:
            return rpc_code.NOT_FOUND, "Entry not found"
        return rpc_code.OK, ""

    def Read(self, request: p4r.ReadRequest, context: Any) -> Iterator[p4r.ReadResponse]:
        reply = p4r.ReadResponse()
        with self._lock:
            for wanted in request.entities:
                if wanted.HasField("counter_entry"):
                    ce = wanted.counter_entry
                    indices = ([ce.index.index] if ce.HasField("index")
                               else [i for (cid, i) in self.counters if cid == ce.counter_id])
                    for index in sorted(indices):
                        packets, nbytes = self.counters.get((ce.counter_id, index), (0, 0))
                        entry = reply.entities.add().counter_entry
                        entry.counter_id, entry.index.index = ce.counter_id, index
                        entry.data.packet_count, entry.data.byte_count = packets, nbytes
                elif wanted.HasField("packet_replication_engine_entry"):
                    for entity in self.entities.values():
                        if entity.HasField("packet_replication_engine_entry"):
                            reply.entities.add().CopyFrom(entity)
                elif wanted.HasField("table_entry"):
                    for entity in self.entities.values():
                        if entity.HasField("table_entry") and entity.table_entry.table_id in (
                            0, wanted.table_entry.table_id,
                        ):
                            reply.entities.add().CopyFrom(entity)
        yield reply


@pytest.fixture
def fake_switch() -> Iterator[FakeP4Runtime]:
    server = FakeP4Runtime()
    yield server
    server.stop()


# --- topologies ----------------------------------------------------------------------------------------------

TOPOLOGY = {
    "switch": {
        "address": "127.0.0.1:1",  # replaced by the fake's address
        "device_id": 1,
        "mac": "02:00:00:00:00:fe",
        "addr": "10.0.0.254",
        "ports": [1, 2, 3],
    },
    "hosts": [
        {"name": "h1", "mac": "02:00:00:00:00:01", "addr": "10.0.0.1", "port": 1},
        {"name": "h2", "mac": "02:00:00:00:00:02", "addr": "10.0.0.2", "port": 2},
        {"name": "h3", "mac": "02:00:00:00:00:03", "addr": "10.0.0.3", "port": 3},
    ],
    "loss": [{"port": 2, "ingress": 0.25, "egress": 1.0}],
    "pool": {"slots": 64, "default_job_slots": 16},
    "jobs": {"lease_seconds": 30},
}


def make_topology(address: str = "127.0.0.1:1", device_id: int = 1, **overrides: Any) -> Topology:
    data = {key: (dict(value) if isinstance(value, dict) else list(value)) for key, value in TOPOLOGY.items()}
    data["switch"]["address"] = address
    data["switch"]["device_id"] = device_id
    for key, value in overrides.items():
        data[key] = value
    return parse_topology(data)


@pytest.fixture
def topology() -> Topology:
    return make_topology()


@pytest.fixture
def make_topo() -> Any:
    """make_topo(address=..., section=value...) -> Topology from TOPOLOGY with sections replaced."""
    return make_topology


@pytest.fixture
def fake_switch_class() -> type[FakeP4Runtime]:
    return FakeP4Runtime


@pytest.fixture(autouse=True)
def own_credentials(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's token file, or takes a credential from the caller's environment: the
    default token file lives under a temporary XDG_CONFIG_HOME (children started by the test inherit it)."""
    config = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("NETAGG_TOKEN", raising=False)
    monkeypatch.delenv("NETAGG_TOKEN_FILE", raising=False)
    return config / "netagg" / "controller.token"
