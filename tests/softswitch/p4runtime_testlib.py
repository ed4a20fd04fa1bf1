"""Helpers for the P4Runtime server tests: the committed netagg program, a raw gRPC client, entity builders by name."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_status
from p4info_contract import BMV2_JSON_PATH, P4INFO_PATH, committed_bmv2_json, committed_p4info

from netagg.softswitch.codec import encode_u128, encode_uint
from netagg.softswitch.p4runtime_server import P4RuntimeServer
from netagg.softswitch.schema import P4Schema, defaults_from_bmv2_json
from netagg.softswitch.state import SwitchState

DEVICE_ID = 1
#: Every wait in these tests ends after this long with an error.
TIMEOUT_S = 10.0


@dataclass(frozen=True, eq=False)  # compared and cached by identity
class Program:
    """The P4Info and BMv2 JSON the tests push, and where the server finds its reference copy."""

    p4info: p4i.P4Info
    device_config: bytes
    p4info_path: Path
    bmv2_json_path: Path

    def config(self, cookie: int | None = None) -> p4r.ForwardingPipelineConfig:
        config = p4r.ForwardingPipelineConfig(p4info=self.p4info, p4_device_config=self.device_config)
        if cookie is not None:
            config.cookie.cookie = cookie
        return config


@functools.cache
def netagg_program() -> Program:
    """The committed netagg program (one per session: tests change copies of its P4Info, never it)."""
    return Program(committed_p4info(), committed_bmv2_json(), P4INFO_PATH, BMV2_JSON_PATH)


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
        /,
        default: bool = False,
        **params: int | bytes,
    ) -> p4r.Entity:
        """A table entry; ``params`` are the action's parameters by name (``key`` among them: positional-only
        ``table``, ``key`` and ``action`` leave those names free for action parameters)."""
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
def running_server(address: str = "127.0.0.1:0") -> Iterator[Running]:
    """A P4Runtime server on loopback (port 0) for the netagg program, stopped on exit."""
    program = netagg_program()
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
