"""P4Runtime server of the software switch: the same service BMv2's simple_switch_grpc offers for netagg.

It serves one device. A controller arbitrates on the StreamChannel, pushes netagg's pipeline (P4Info + BMv2
JSON) with SetForwardingPipelineConfig, then writes and reads table entries, default entries, counters and
multicast groups; ``p4runtime_entities.py`` maps those onto the ``SwitchState`` the data path reads. Only the
netagg program is accepted: a pushed P4Info is compared with the committed one (``schema.REFERENCE_P4INFO``).
Packet-out is not supported (answered with a StreamError, UNIMPLEMENTED); see docs/p4runtime.md.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

import grpc
from finsy.proto import p4i, p4r, p4r_grpc, rpc_code, rpc_status

from .codec import decode_u128
from .p4runtime_arbitration import MAX_CONTROLLERS, Arbiter, Controller
from .p4runtime_entities import EntityStore, P4RuntimeError
from .schema import (
    REFERENCE_BMV2_JSON,
    REFERENCE_P4INFO,
    P4Schema,
    SchemaError,
    defaults_from_bmv2_json,
    load_p4info,
    pipeline_differences,
)
from .state import SwitchState

LOG = logging.getLogger(__name__)

#: What Capabilities answers: the P4Runtime version BMv2's server implements.
P4RUNTIME_API_VERSION = "1.3.0"
#: Vendor error space of per-update errors.
ERROR_SPACE = "netagg-softswitch"
#: Entities per streamed ReadResponse (keeps every message far below gRPC's size limit).
READ_CHUNK = 1024
#: Largest message accepted (a P4Info plus BMv2 JSON), as BMv2's server allows.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: How often a stream handler checks that its RPC is still alive while it waits for something to send.
STREAM_POLL_S = 1.0
#: How many differences a refused pipeline's error message lists.
MAX_LISTED_DIFFERENCES = 8
#: Streams open at once that have not arbitrated yet (a new one ends the oldest). Every open stream holds a server
#: thread, so without a bound a few dozen idle connections would take every thread and hang Read and Write.
MAX_UNARBITRATED_STREAMS = 8
#: Seconds a stream may stay open without a MasterArbitrationUpdate before the switch ends it.
ARBITRATION_TIMEOUT_S = 10.0

_NO_PIPELINE = "No forwarding pipeline config set for this device"
_CONFIG_ACTION = p4r.SetForwardingPipelineConfigRequest
_RESPONSE_TYPE = p4r.GetForwardingPipelineConfigRequest


class Pipeline(Protocol):
    """What the server needs from the data path."""

    def reset(self) -> None:
        """Zero every register (called when a pipeline is pushed)."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the P4Runtime server: its certificate chain and key (PEM), and optionally the CA whose client
    certificates it requires (mutual TLS). Without TLS the server's port must only be reachable by trusted hosts:
    whoever connects can become primary and rewrite every table (docs/security.md)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, client_ca: Path | None = None) -> TlsConfig:
        """Read the PEM files; raises OSError naming a file that cannot be read."""

        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise OSError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None

        return cls(
            read(cert, "certificate"),
            read(key, "private key"),
            None if client_ca is None else read(client_ca, "client CA certificate"),
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A gRPC status carrying binary google.rpc.Status details (what grpcio-status would build)."""


@dataclass
class _Loaded:
    """The committed pipeline: what Get returns and what Read/Write work on."""

    config: p4r.ForwardingPipelineConfig
    store: EntityStore


class P4RuntimeServer(p4r_grpc.P4RuntimeServicer):
    """P4Runtime service for one device whose state is ``state``."""

    def __init__(
        self,
        state: SwitchState,
        pipeline: Pipeline | None,
        device_id: int,
        address: str,
        *,
        reference_p4info: Path | p4i.P4Info = REFERENCE_P4INFO,
        reference_bmv2_json: Path | None = REFERENCE_BMV2_JSON,
        max_controllers: int = MAX_CONTROLLERS,
        max_unarbitrated: int = MAX_UNARBITRATED_STREAMS,
        arbitration_timeout: float = ARBITRATION_TIMEOUT_S,
        tls: TlsConfig | None = None,
    ) -> None:
        """``address`` is 'host:port' (port 0 picks a free one, see ``port``) or 'unix:/path'.

        ``reference_p4info`` is the only program accepted; ``reference_bmv2_json`` gives the initial default
        actions when a pipeline is pushed without a device config. At most ``max_unarbitrated`` streams may be
        open without having arbitrated, each for at most ``arbitration_timeout`` seconds. ``tls`` serves over TLS
        instead of plaintext.
        """
        if device_id <= 0:
            raise ValueError(f"device id must be positive, got {device_id}")
        self.state = state
        self.pipeline = pipeline
        self.device_id = device_id
        self.address = address
        self.port: int | None = None
        self.reference_p4info = reference_p4info
        self.reference_bmv2_json = reference_bmv2_json
        self.arbiter = Arbiter(device_id, max_controllers)
        self._max_controllers = max_controllers
        self._max_unarbitrated = max_unarbitrated
        self._arbitration_timeout = arbitration_timeout
        self._unarbitrated: list[Controller] = []  # open streams not arbitrated yet, oldest first
        self._streams_lock = threading.Lock()
        self.tls = tls
        self._loaded: _Loaded | None = None
        self._saved_uncommitted = False
        self._config_lock = threading.Lock()  # one pipeline change at a time
        self._server: grpc.Server | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and start serving; returns once the server accepts RPCs."""
        if self._server is not None:
            raise RuntimeError("P4Runtime server already started")
        # Every stream holds a worker for its lifetime (arbitrated ones up to max_controllers, the others up to
        # max_unarbitrated); leave room for unary RPCs beside them.
        workers = self._max_controllers + self._max_unarbitrated + 16
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p4rt"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        p4r_grpc.add_P4RuntimeServicer_to_server(self, server)
        try:
            if self.tls is None:
                port = server.add_insecure_port(self.address)
            else:
                port = server.add_secure_port(self.address, self.tls.credentials())
        except RuntimeError as exc:
            raise OSError(f"P4Runtime server cannot bind {self.address}: {exc}") from None
        if not self.address.startswith("unix:"):
            if port == 0:
                raise OSError(f"P4Runtime server cannot bind {self.address}")
            self.port = port
        server.start()
        self._server = server
        LOG.info(
            "P4Runtime server for device %d listening on %s (%s)",
            self.device_id,
            self.bound_address,
            "plaintext" if self.tls is None else ("mutual TLS" if self.tls.client_ca else "TLS"),
        )

    @property
    def bound_address(self) -> str:
        """The address clients connect to (with the real port when 0 was asked for)."""
        if self.port is None:
            return self.address
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop serving: end every stream and wait (at most ``grace`` + 5 s) until handlers have returned."""
        if self._server is None:
            return
        done = self._server.stop(grace)
        if not done.wait(timeout=(grace or 0) + 5.0):
            LOG.warning("P4Runtime server: handlers still running after stop")
        self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ pipeline

    def load_pipeline(self, config: p4r.ForwardingPipelineConfig) -> None:
        """Verify and commit a pipeline as a controller's VERIFY_AND_COMMIT would (raises P4RuntimeError)."""
        with self._config_lock:
            self._commit(config, self._verify(config))

    def _verify(self, config: p4r.ForwardingPipelineConfig) -> P4Schema:
        """The schema of a pushed pipeline, or P4RuntimeError(INVALID_ARGUMENT) naming why it is refused."""
        if not config.HasField("p4info"):
            raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, "the config has no P4Info")
        reference = self._reference_p4info()
        diffs = pipeline_differences(reference, config.p4info)
        if diffs:
            listed = "; ".join(diffs[:MAX_LISTED_DIFFERENCES])
            more = len(diffs) - MAX_LISTED_DIFFERENCES
            raise P4RuntimeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "this switch runs only the netagg program, and the pushed P4Info differs: "
                f"{listed}{f'; and {more} more' if more > 0 else ''}",
            )
        try:
            if config.p4_device_config:
                defaults = defaults_from_bmv2_json(config.p4_device_config, config.p4info)
            elif self.reference_bmv2_json is not None and self.reference_bmv2_json.exists():
                defaults = defaults_from_bmv2_json(self.reference_bmv2_json.read_bytes(), config.p4info)
            else:
                defaults = {}
            return P4Schema(config.p4info, defaults)
        except SchemaError as exc:
            raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def _reference_p4info(self) -> p4i.P4Info:
        if isinstance(self.reference_p4info, p4i.P4Info):
            return self.reference_p4info
        if not self.reference_p4info.exists():
            raise P4RuntimeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the netagg P4Info {self.reference_p4info} does not exist: build the P4 program",
            )
        try:
            return load_p4info(self.reference_p4info)
        except SchemaError as exc:
            raise P4RuntimeError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    def _commit(self, config: p4r.ForwardingPipelineConfig, schema: P4Schema) -> None:
        """Install a verified pipeline: fresh tables, counters and groups, registers zeroed."""
        saved = p4r.ForwardingPipelineConfig()
        saved.CopyFrom(config)
        with self.state.lock:
            schema.reset_state(self.state)
            if self.pipeline is not None:
                self.pipeline.reset()
            self._loaded = _Loaded(saved, EntityStore(schema, self.state))
            self.state.bump()
        LOG.info(
            "pipeline committed (%d tables, %d counters, cookie %s)",
            len(schema.tables),
            len(schema.counters),
            saved.cookie.cookie if saved.HasField("cookie") else "unset",
        )

    # ------------------------------------------------------------ common checks

    def _check_device(self, device_id: int, role: str = "") -> None:
        if device_id != self.device_id:
            raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, f"unknown device id {device_id}")
        if role:
            raise P4RuntimeError(
                grpc.StatusCode.NOT_FOUND, f"unknown role {role!r} (only the default role exists)"
            )

    def _check_primary(
        self, request: p4r.WriteRequest | p4r.SetForwardingPipelineConfigRequest, context: grpc.ServicerContext
    ) -> None:
        self.arbiter.check_primary(
            request.HasField("election_id"), decode_u128(request.election_id), context.peer()
        )

    def _require_pipeline(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise P4RuntimeError(grpc.StatusCode.FAILED_PRECONDITION, _NO_PIPELINE)
        return loaded

    @staticmethod
    def _abort(context: grpc.ServicerContext, exc: P4RuntimeError) -> None:
        LOG.info("P4Runtime request refused: %s", exc)
        context.abort(exc.code, exc.message)

    # ------------------------------------------------------------ RPCs

    def Capabilities(
        self, request: p4r.CapabilitiesRequest, context: grpc.ServicerContext
    ) -> p4r.CapabilitiesResponse:
        return p4r.CapabilitiesResponse(p4runtime_api_version=P4RUNTIME_API_VERSION)

    def SetForwardingPipelineConfig(
        self, request: p4r.SetForwardingPipelineConfigRequest, context: grpc.ServicerContext
    ) -> p4r.SetForwardingPipelineConfigResponse:
        try:
            self._check_device(request.device_id, request.role)
            self._check_primary(request, context)
            self._set_pipeline(request.action, request.config, request.HasField("config"))
        except P4RuntimeError as exc:
            self._abort(context, exc)
        return p4r.SetForwardingPipelineConfigResponse()

    def _set_pipeline(self, action: int, config: p4r.ForwardingPipelineConfig, has_config: bool) -> None:
        with self._config_lock:
            if action == _CONFIG_ACTION.VERIFY:
                self._verify(config)
            elif action in (_CONFIG_ACTION.VERIFY_AND_COMMIT, _CONFIG_ACTION.VERIFY_AND_SAVE):
                # As in BMv2's server, saving already realizes the config (the forwarding state is cleared);
                # COMMIT then only completes it.
                self._commit(config, self._verify(config))
                self._saved_uncommitted = action == _CONFIG_ACTION.VERIFY_AND_SAVE
            elif action == _CONFIG_ACTION.COMMIT:
                if has_config:
                    raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, "COMMIT takes no config")
                if not self._saved_uncommitted:
                    raise P4RuntimeError(
                        grpc.StatusCode.NOT_FOUND, "no saved config to commit (VERIFY_AND_SAVE first)"
                    )
                self._saved_uncommitted = False
            elif action == _CONFIG_ACTION.RECONCILE_AND_COMMIT:
                raise P4RuntimeError(grpc.StatusCode.UNIMPLEMENTED, "RECONCILE_AND_COMMIT is not supported")
            else:
                raise P4RuntimeError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"invalid SetForwardingPipelineConfig action {action}"
                )

    def GetForwardingPipelineConfig(
        self, request: p4r.GetForwardingPipelineConfigRequest, context: grpc.ServicerContext
    ) -> p4r.GetForwardingPipelineConfigResponse:
        try:
            self._check_device(request.device_id)
            loaded = self._require_pipeline()
            saved = loaded.config
            out = p4r.ForwardingPipelineConfig()
            kind = request.response_type
            if kind not in (
                _RESPONSE_TYPE.ALL,
                _RESPONSE_TYPE.COOKIE_ONLY,
                _RESPONSE_TYPE.P4INFO_AND_COOKIE,
                _RESPONSE_TYPE.DEVICE_CONFIG_AND_COOKIE,
            ):
                raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid response_type {kind}")
            if kind in (_RESPONSE_TYPE.ALL, _RESPONSE_TYPE.P4INFO_AND_COOKIE):
                out.p4info.CopyFrom(saved.p4info)
            if kind in (_RESPONSE_TYPE.ALL, _RESPONSE_TYPE.DEVICE_CONFIG_AND_COOKIE):
                out.p4_device_config = saved.p4_device_config
            if saved.HasField("cookie"):
                out.cookie.CopyFrom(saved.cookie)
        except P4RuntimeError as exc:
            self._abort(context, exc)
        return p4r.GetForwardingPipelineConfigResponse(config=out)

    def Write(self, request: p4r.WriteRequest, context: grpc.ServicerContext) -> p4r.WriteResponse:
        errors: list[P4RuntimeError | None] = []
        # The pipeline is looked up under the lock, so a write never lands in a pipeline being replaced.
        with self.state.lock:
            try:
                self._check_device(request.device_id, request.role)
                self._check_primary(request, context)
                loaded = self._require_pipeline()
                if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
                    raise P4RuntimeError(
                        grpc.StatusCode.UNIMPLEMENTED, "only the CONTINUE_ON_ERROR atomicity is supported"
                    )
            except P4RuntimeError as exc:
                self._abort(context, exc)
            for update in request.updates:
                try:
                    loaded.store.write(update)
                    errors.append(None)
                except P4RuntimeError as exc:
                    errors.append(exc)
            if any(e is None for e in errors):
                self.state.bump()
        failed = [(i, e) for i, e in enumerate(errors) if e is not None]
        if failed:
            self._abort_with_details(context, errors, failed)
        return p4r.WriteResponse()

    @staticmethod
    def _abort_with_details(
        context: grpc.ServicerContext,
        errors: list[P4RuntimeError | None],
        failed: list[tuple[int, P4RuntimeError]],
    ) -> None:
        """End a Write as the spec says for batches: UNKNOWN, one p4.v1.Error per update (OK if applied)."""
        first_index, first = failed[0]
        message = f"{len(failed)} of {len(errors)} updates failed; update {first_index}: {first}"
        status = rpc_status.Status(code=rpc_code.UNKNOWN, message=message)
        for e in errors:
            detail = (
                p4r.Error(canonical_code=rpc_code.OK)
                if e is None
                else p4r.Error(canonical_code=e.code.value[0], message=e.message, space=ERROR_SPACE)
            )
            status.details.add().Pack(detail)
        LOG.info("P4Runtime write: %s", message)
        context.abort_with_status(
            _Status(
                grpc.StatusCode.UNKNOWN, message, (("grpc-status-details-bin", status.SerializeToString()),)
            )
        )

    def Read(self, request: p4r.ReadRequest, context: grpc.ServicerContext) -> Iterator[p4r.ReadResponse]:
        # Collect under the lock so that a read sees each write whole, then stream without holding it.
        try:
            self._check_device(request.device_id, request.role)
            with self.state.lock:
                loaded = self._require_pipeline()
                entities = [e for req in request.entities for e in loaded.store.read(req)]
        except P4RuntimeError as exc:
            self._abort(context, exc)
        if not entities:
            yield p4r.ReadResponse()
        for start in range(0, len(entities), READ_CHUNK):
            yield p4r.ReadResponse(entities=entities[start : start + READ_CHUNK])

    def StreamChannel(
        self, request_iterator: Iterator[p4r.StreamMessageRequest], context: grpc.ServicerContext
    ) -> Iterator[p4r.StreamMessageResponse]:
        ctl = Controller(peer=context.peer())
        with self._streams_lock:
            # Full: end the stream that has waited longest instead of refusing this one, so idle connections can
            # delay a controller that arbitrates at once but never lock it out.
            if len(self._unarbitrated) >= self._max_unarbitrated:
                oldest = self._unarbitrated.pop(0)
                oldest.outbox.put(
                    P4RuntimeError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"more than {self._max_unarbitrated} streams were open without having arbitrated; "
                        "this one waited longest (send a MasterArbitrationUpdate first on every stream)",
                    )
                )
            self._unarbitrated.append(ctl)
        counted = True  # still among the unarbitrated streams

        def uncount() -> None:
            nonlocal counted
            if counted:
                with self._streams_lock:
                    if ctl in self._unarbitrated:
                        self._unarbitrated.remove(ctl)
                counted = False

        context.add_callback(lambda: ctl.outbox.put(None))
        reader = threading.Thread(
            target=self._read_stream,
            args=(request_iterator, ctl),
            name=f"p4rt-stream-{ctl.peer}",
            daemon=True,
        )
        reader.start()
        deadline = time.monotonic() + self._arbitration_timeout
        try:
            while context.is_active():
                if counted and ctl.election_id is not None:
                    uncount()
                wait = STREAM_POLL_S
                if counted:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._abort(
                            context,
                            P4RuntimeError(
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no MasterArbitrationUpdate within {self._arbitration_timeout:g} s of opening "
                                "the stream",
                            ),
                        )
                    wait = min(wait, left)
                try:
                    item = ctl.outbox.get(timeout=wait)
                except queue.Empty:  # nothing to send yet: check that the RPC is still alive
                    continue
                if item is None:
                    return
                if isinstance(item, P4RuntimeError):
                    self._abort(context, item)
                yield item
        finally:
            uncount()
            self.arbiter.remove(ctl)

    def _read_stream(self, request_iterator: Iterator[p4r.StreamMessageRequest], ctl: Controller) -> None:
        """Handle what a controller sends on its stream; ends by queueing None (closed) or an error."""
        try:
            for request in request_iterator:
                kind = request.WhichOneof("update")
                if kind == "arbitration":
                    try:
                        self.arbiter.arbitrate(ctl, request.arbitration)
                    except P4RuntimeError as exc:
                        ctl.outbox.put(exc)
                        return
                elif ctl.election_id is None:
                    LOG.info("stream %s: %s before arbitration ignored", ctl.peer, kind)
                else:
                    ctl.outbox.put(self._stream_error(request, kind))
        except grpc.RpcError:
            pass  # the client went away: the RPC's callback ends the handler
        except Exception:  # a bug here must not leave the stream hanging
            LOG.exception("stream %s: error while reading", ctl.peer)
            ctl.outbox.put(P4RuntimeError(grpc.StatusCode.INTERNAL, "internal error reading the stream"))
            return
        ctl.outbox.put(None)

    @staticmethod
    def _stream_error(request: p4r.StreamMessageRequest, kind: str | None) -> p4r.StreamMessageResponse:
        """The StreamError answering a stream message the switch does not support."""
        if kind == "packet":
            error = p4r.StreamError(
                canonical_code=rpc_code.UNIMPLEMENTED,
                space=ERROR_SPACE,
                message="packet-out is not supported by the netagg software switch",
                packet_out=p4r.PacketOutError(packet_out=request.packet),
            )
        elif kind == "digest_ack":
            error = p4r.StreamError(
                canonical_code=rpc_code.INVALID_ARGUMENT,
                space=ERROR_SPACE,
                message=f"digest id {request.digest_ack.digest_id} is not in the P4Info",
                digest_list_ack=p4r.DigestListAckError(digest_list_ack=request.digest_ack),
            )
        else:
            error = p4r.StreamError(
                canonical_code=rpc_code.UNIMPLEMENTED,
                space=ERROR_SPACE,
                message=f"stream message {kind or 'without content'} is not supported",
                other=p4r.StreamOtherError(other=request.other),
            )
        return p4r.StreamMessageResponse(error=error)
