"""The switch layer: one P4Runtime switch, kept programmed with the static state and the current jobs.

finsy provides the encoding, the P4Info schema, the entities and the gRPC client; this module adds the
lifecycle. At start it pushes the pipeline unconditionally, on a session of its own. Later, whenever finsy
(re)connects and becomes primary -- after a dropped connection or a switch restart -- its ready handler re-installs
everything: finsy first pushes the pipeline only if the switch does not already run it (cookie check), then
``_reinstall`` inserts the static state and every current job, turning ALREADY_EXISTS into MODIFY, so it is right
in both cases.

Each of these pushes, and only these, zeroes the switch's registers while the controller knows it; each is reported
to the ``EpochCounter``, which may then hand out low epochs again (``epochs.py``). A reconnection without a push
(the switch kept running) leaves the counter alone, as does anything this controller did not push itself.

finsy runs on asyncio in a thread of its own; the rest of the controller is threaded and calls the blocking
methods here. Every P4Runtime failure leaves this module as a ``SwitchError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from finsy import (
    GRPCCredentialsTLS,
    GRPCStatusCode,
    P4Client,
    P4ClientError,
    P4CounterEntry,
    P4MulticastGroupEntry,
    P4Schema,
    P4TableAction,
    P4TableEntry,
    Switch,
    SwitchEvent,
    SwitchOptions,
)
from finsy.proto import U128, p4r

from .entries import ACTION_PARAMS, Entity, agg_addr_default, job_entries, job_keys, static_entries
from .epochs import EpochCounter
from .errors import ConfigError, SwitchError, SwitchUnavailable, UpdateFailure
from .jobs import Job
from .topology import Topology

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Every P4Info name the controller uses, by kind (docs/protocol.md, "P4Info names").
REQUIRED_TABLES = ("workers", "results", "agg_addr", "l2_forward", "arp_reply", "ingress_loss", "egress_loss")
REQUIRED_COUNTERS = ("drops", "job_drops", "job_stats")


def check_p4info(schema: P4Schema) -> None:
    """Fail early, in one line naming every difference, if the P4Info is not the pipeline this controller writes.

    Tables, counters, and each action's parameters with their widths: a pipeline compiled for another wire
    version would otherwise refuse the first job (a missing ``key``) or, worse, the 65,536th (a 16-bit epoch).
    """
    problems = [f"lacks table {t}" for t in REQUIRED_TABLES if schema.tables.get(t) is None]
    problems += [f"lacks counter {c}" for c in REQUIRED_COUNTERS if schema.counters.get(c) is None]
    for (table_name, action_name), wanted in ACTION_PARAMS.items():
        table = schema.tables.get(table_name)
        if table is None:
            continue
        resolved = _action_in_table(table, action_name)
        if resolved is None:
            problems.append(f"table {table_name} has no action {action_name}")
            continue
        have = {param.name: param.bitwidth for param in schema.actions[resolved].params}
        for param, width in wanted.items():
            if param not in have:
                problems.append(f"action {action_name} lacks parameter {param} ({width} bits)")
            elif have[param] != width:
                problems.append(f"action {action_name} parameter {param} is {have[param]} bits, not {width}")
        problems += [f"action {action_name} has parameter {p} that this controller does not know"
                     for p in have if p not in wanted]
    if problems:
        unique = list(dict.fromkeys(problems))  # set_loss is checked for two tables
        raise ConfigError(
            f"the P4Info does not match this controller (docs/protocol.md, \"P4Info names\"): {'; '.join(unique)}. "
            f"Use the pipeline compiled from this version of p4/ (make -C p4)"
        )


def _action_in_table(table: Any, name: str) -> str | None:
    """The name the P4Info knows action ``name`` by among the table's actions, or None.

    The contract names ``set_loss`` for both ``ingress_loss`` and ``egress_loss``; a compiler may qualify the two
    actions (``Ingress.set_loss``) because their short names clash.
    """
    if table.actions.get(name) is not None:
        return name
    matches = [ref.alias for ref in table.actions if ref.name.endswith("." + name) or ref.alias.endswith("." + name)]
    return matches[0] if len(matches) == 1 else None


def resolve_actions(entities: Iterable[Entity], schema: P4Schema) -> list[Entity]:
    """Rewrite action names to the name the P4Info knows them by within their table (see ``_action_in_table``)."""
    out = []
    for entity in entities:
        if isinstance(entity, P4TableEntry) and isinstance(entity.action, P4TableAction):
            resolved = _action_in_table(schema.tables[entity.table_id], entity.action.name)
            if resolved is None:
                raise ConfigError(
                    f"table {entity.table_id} has no single action named {entity.action.name} in the P4Info"
                )
            entity.action.name = resolved
        out.append(entity)
    return out


#: Action parameters that are secrets: error messages and logs show that they are set, never their value.
SECRET_PARAMS = frozenset({"key"})


def describe(entity: Entity) -> str:
    """Short human-readable form of an entity for error messages (secret parameters redacted)."""
    if isinstance(entity, P4TableEntry):
        match = dict(entity.match) if entity.match else {}
        text = f"table {entity.table_id} {match}"
        if isinstance(entity.action, P4TableAction):
            args = {k: ("<secret>" if k in SECRET_PARAMS else v) for k, v in entity.action.args.items()}
            text += f" -> {entity.action.name}{args}"
        return text
    if isinstance(entity, P4MulticastGroupEntry):
        return f"multicast group {entity.multicast_group_id}"
    return repr(entity)


def translate(ex: P4ClientError, operation: str, entities: Sequence[Entity] = ()) -> SwitchError:
    """The one place a finsy/gRPC error becomes a SwitchError."""
    details = [
        UpdateFailure(
            index,
            GRPCStatusCode(err.canonical_code).name,
            err.message,
            describe(entities[index]) if index < len(entities) else "?",
        )
        for index, err in sorted(ex.details.items())
    ]
    return SwitchError(operation, ex.code.name, ex.message, details)


class _PushWatch:
    """The pipeline's device config as finsy's ``p4blob``, noting when finsy reads it to push the pipeline.

    On a (re)connection finsy pushes the pipeline only if the switch does not run it already, and does not say
    which it did; the epoch counter must know. finsy takes ``p4blob`` as a path or as any object with
    ``__bytes__``, reads it once to compute the pipeline's cookie when the ``Switch`` is built, and after that only
    to build the push request. So once armed, a read means a push was sent; the ready handler that follows on
    the same connection confirms it went through (a failed push drops the connection instead, and ``_on_down``
    forgets the read). A test against the fake switch checks both cases, should finsy change.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self.armed = False
        self.read_since_ready = False

    def __bytes__(self) -> bytes:
        if self.armed:
            self.read_since_ready = True
        return self._path.read_bytes()


def tls_credentials(topology: Topology) -> GRPCCredentialsTLS | None:
    """The P4Runtime channel's TLS credentials from the config's [switch] tls_* files (None: plain TCP).

    The files are read now, so that a missing one is a ConfigError naming it, not a connection that never comes up.
    """
    if topology.tls_ca is None:
        return None

    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as ex:
            raise ConfigError(f"[switch] {what}: cannot read {path}: {ex.strerror}") from None

    return GRPCCredentialsTLS(
        cacert=read(topology.tls_ca, "tls_ca"),
        cert=read(topology.tls_cert, "tls_cert"),
        private_key=read(topology.tls_key, "tls_key"),
    )


class SwitchConnection:
    """A programmed P4Runtime switch; implements the application layer's ``JobProgrammer``.

    ``epochs`` is told of every pipeline push this connection makes (share it with the ``JobManager``).
    """

    def __init__(
        self,
        topology: Topology,
        p4info: Path,
        p4blob: Path,
        *,
        name: str = "netagg",
        call_timeout: float = 30.0,
        epochs: EpochCounter | None = None,
    ) -> None:
        self.topology = topology
        self._p4info = Path(p4info)
        self._p4blob = Path(p4blob)
        for path in (self._p4info, self._p4blob):
            if not path.is_file():
                raise ConfigError(f"pipeline artifact {path} does not exist")
        self._name = name
        self._credentials = tls_credentials(topology)
        self._call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._switch: Switch | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None  # serialises writes: job installs, removals, re-installs
        self._ready = threading.Event()
        self._ready_count = 0
        self._jobs: dict[int, Job] = {}  # what the switch must hold, by job id
        self._pending_deletes: list[Job] = []  # removed while the switch was unreachable
        self._generation = 0  # +1 each time the switch was found empty (registers and counters zeroed)
        self._last_error = ""  # why the last (re)install failed, for SwitchUnavailable messages
        self.epochs = EpochCounter() if epochs is None else epochs
        self._push_watch = _PushWatch(self._p4blob)
        self._stopping = False  # set by stop(): the connection going down is not news then

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Connect, push the pipeline, install the static state; raises SwitchUnavailable after ``timeout``."""
        schema = P4Schema(self._p4info, self._p4blob)
        check_p4info(schema)
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="netagg-p4runtime", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(schema, timeout), timeout + self._call_timeout)
            if not self._ready.wait(max(timeout, 1.0)):
                raise SwitchUnavailable(
                    f"switch {self.topology.address} did not become ready within {timeout:g} s{self._why()}"
                )
        except BaseException:
            self.stop()
            raise

    async def _start(self, schema: P4Schema, timeout: float) -> None:
        self._lock = asyncio.Lock()
        options = SwitchOptions(
            p4info=self._p4info,
            p4blob=self._push_watch,
            device_id=self.topology.device_id,
            initial_election_id=self.topology.election_id,
            channel_credentials=self._credentials,
        )
        deadline = time.monotonic() + timeout
        # A one-off session that always pushes the pipeline: the switch may still hold registers written under
        # epochs of a previous controller, which this one cannot know.
        while True:
            try:
                await self._push_pipeline(schema, max(deadline - time.monotonic(), 1.0))
                self.epochs.pipeline_pushed(job.epoch for job in self._jobs.values())
                break
            except SwitchUnavailable as ex:
                if time.monotonic() > deadline:
                    raise SwitchUnavailable(f"cannot push the pipeline to {self.topology.address} within "
                                            f"{timeout:g} s: {ex.status_message}") from None
                log.info("switch %s not reachable yet (%s); retrying", self.topology.address, ex.status_message)
                await asyncio.sleep(0.2)
        self._generation += 1
        switch = Switch(self._name, self.topology.address, options(ready_handler=self._on_ready))
        self._push_watch.armed, self._push_watch.read_since_ready = True, False  # past the cookie computation
        switch.ee.on(SwitchEvent.CHANNEL_DOWN, self._on_down)
        self._switch = switch
        self._run_task = asyncio.create_task(switch.run())

    async def _push_pipeline(self, schema: P4Schema, timeout: float) -> None:
        """Become primary on a fresh stream and push the pipeline with VERIFY_AND_COMMIT.

        Raises SwitchUnavailable when the switch does not answer (worth retrying), SwitchError when it refuses.
        """
        topo = self.topology
        client = P4Client(topo.address, self._credentials, wait_for_ready=False)
        await client.open(schema=schema)
        try:
            election_id = U128.encode(topo.election_id)
            arbitration = p4r.MasterArbitrationUpdate(device_id=topo.device_id, election_id=election_id)
            try:
                await client.send(p4r.StreamMessageRequest(arbitration=arbitration))
                while True:
                    reply = await asyncio.wait_for(client.receive(), timeout)
                    if reply.WhichOneof("update") == "arbitration":
                        break
            except P4ClientError as ex:
                if ex.code == GRPCStatusCode.UNAVAILABLE:
                    raise SwitchUnavailable(f"{ex.code.name}: {ex.message}") from None
                raise translate(ex, "arbitration") from None
            except TimeoutError:
                raise SwitchUnavailable(f"no arbitration answer within {timeout:g} s") from None
            if reply.arbitration.status.code != GRPCStatusCode.OK:
                raise SwitchError(
                    "arbitration", GRPCStatusCode(reply.arbitration.status.code).name,
                    f"election id {topo.election_id} did not make this controller primary on device "
                    f"{topo.device_id} (another controller with a higher election id is connected)",
                )
            await self._clear_multicast_groups(client, election_id)
            request = p4r.SetForwardingPipelineConfigRequest(
                device_id=topo.device_id,
                election_id=election_id,
                action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
                config=schema.get_pipeline_config(),
            )
            try:
                await client.request(request)
            except P4ClientError as ex:
                raise translate(ex, "push pipeline") from None
            log.info("pipeline pushed to %s: %s", topo.address, schema.get_pipeline_info())
        finally:
            await client.close()

    async def _clear_multicast_groups(self, client: P4Client, election_id: Any) -> None:
        """Delete every multicast group the switch reports, before a pipeline push.

        The P4Runtime spec has a push clear all forwarding state, and the softswitch does. BMv2 1.15.5 keeps its
        replication engine's groups across a push while its P4Runtime server forgets them, so re-inserting a group
        afterwards doubles every replica (each worker gets every RESULT twice). Deleting them first is correct on
        every target. A switch without a pipeline has no groups and refuses the read: nothing to do.
        """
        device_id = self.topology.device_id
        wildcard = p4r.Entity(
            packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
                multicast_group_entry=p4r.MulticastGroupEntry()
            )
        )
        groups: list[p4r.Entity] = []
        try:
            async for reply in client.request_iter(p4r.ReadRequest(device_id=device_id, entities=[wildcard])):
                groups.extend(e for e in reply.entities if e.HasField("packet_replication_engine_entry"))
        except P4ClientError as ex:
            log.debug("no multicast groups to clear before the push (%s: %s)", ex.code.name, ex.message)
            return
        if not groups:
            return
        updates = [p4r.Update(type=p4r.Update.DELETE, entity=entity) for entity in groups]
        try:
            await client.request(p4r.WriteRequest(device_id=device_id, election_id=election_id, updates=updates))
        except P4ClientError as ex:
            raise translate(ex, "delete multicast groups before the pipeline push") from None
        log.info("deleted %d multicast group(s) left on %s before the push", len(groups), self.topology.address)

    def stop(self) -> None:
        """Close the connection and the loop thread (the switch keeps its state)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True  # the connection going down now is expected: no warning, no reconnection
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10.0)
        except concurrent.futures.TimeoutError:
            log.warning("P4Runtime client did not stop within 10 s")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = self._run_task = self._switch = None
        self._ready.clear()
        self._stopping = False
        log.info("P4Runtime client for %s stopped", self.topology.address)

    async def _close(self) -> None:
        """Stop finsy's Switch, then end every task still on the loop, before the loop itself stops.

        A task left pending when the loop closes is destroyed later with an error logged ("Task was destroyed but
        it is pending"): gRPC's bookkeeping of a call cancelled with the channel, or a request another thread
        sent just before the stop. Cancel them and wait until they are done; new ones may appear while the
        first ones unwind, hence the rounds.
        """
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        current = asyncio.current_task()
        for _ in range(10):
            rest = [task for task in asyncio.all_tasks() if task is not current]
            if not rest:
                break
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    @property
    def ready_count(self) -> int:
        """How many times the switch has been (re)programmed after becoming ready."""
        return self._ready_count

    @property
    def pipeline_generation(self) -> int:
        """Changes whenever the switch's registers and counters were found reset (pipeline pushed)."""
        return self._generation

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise SwitchUnavailable(f"switch {self.topology.address} not ready within {timeout:g} s")

    # --- finsy callbacks (on the loop thread) ----------------------------------------------------------------

    def _on_down(self, _switch: Switch) -> None:
        self._ready.clear()
        self._push_watch.read_since_ready = False  # a push on that connection was not confirmed: assume none
        if self._stopping:
            log.info("P4Runtime connection to %s closed", self.topology.address)
        else:
            log.warning("P4Runtime connection to %s is down; will re-install on reconnect", self.topology.address)

    async def _on_ready(self, switch: Switch) -> None:
        pushed, self._push_watch.read_since_ready = self._push_watch.read_since_ready, False
        if not switch.is_primary:
            self._ready.clear()
            log.error("another controller is primary on %s; not programming the switch", self.topology.address)
            return
        assert self._lock is not None
        async with self._lock:
            if pushed:
                # finsy pushed the pipeline on this connection (the switch did not run it): registers are zero.
                # Under the lock, so no job install interleaves; the jobs about to be re-installed keep their epochs.
                self.epochs.pipeline_pushed(job.epoch for job in self._jobs.values())
                log.info("pipeline pushed to %s on reconnection; epochs restart after %d",
                         self.topology.address, self.epochs.last)
            try:
                fresh = await self._reinstall(switch)
            except SwitchError as ex:
                # finsy logs the failure, drops the connection and tries again later.
                self._last_error = str(ex)
                raise
            self._last_error = ""
            if fresh:
                self._generation += 1
            self._ready_count += 1
            self._ready.set()
        log.info(
            "switch %s programmed (%s): static state and %d job(s)",
            self.topology.address, "was empty" if fresh else "reconciled", len(self._jobs),
        )

    async def _reinstall(self, switch: Switch) -> bool:
        """Bring the switch to the wanted state; returns True if it held none of it (a fresh pipeline)."""
        for job in self._pending_deletes:
            await self._delete(switch, job_keys(job))
        self._pending_deletes.clear()
        entities: list[Entity] = static_entries(self.topology)
        for job in self._jobs.values():
            entities += job_entries(job)
        fresh = await self._upsert(switch, entities)
        await self._modify(switch, [agg_addr_default(self.topology)])
        return fresh

    # --- writes ----------------------------------------------------------------------------------------------

    async def _upsert(self, switch: Switch, entities: list[Entity]) -> bool:
        """INSERT all; MODIFY those that already exist. Returns True if none existed."""
        entities = resolve_actions(entities, switch.p4info)
        try:
            await switch.insert(entities)
            return True
        except P4ClientError as ex:
            existing = [i for i, e in ex.details.items() if e.canonical_code == GRPCStatusCode.ALREADY_EXISTS]
            if not ex.details or len(existing) != len(ex.details):
                raise translate(ex, "insert", entities) from None
        await self._modify(switch, [entities[i] for i in sorted(existing)])
        return False

    async def _modify(self, switch: Switch, entities: list[Entity]) -> None:
        entities = resolve_actions(entities, switch.p4info)
        try:
            await switch.modify(entities)
        except P4ClientError as ex:
            raise translate(ex, "modify", entities) from None

    async def _insert(self, switch: Switch, entities: list[Entity]) -> None:
        entities = resolve_actions(entities, switch.p4info)
        try:
            await switch.insert(entities)
        except P4ClientError as ex:
            raise translate(ex, "insert", entities) from None

    async def _delete(self, switch: Switch, entities: list[Entity]) -> None:
        """DELETE, ignoring entries that are already gone."""
        try:
            await switch.delete(entities, strict=False)
        except P4ClientError as ex:
            raise translate(ex, "delete", entities) from None

    def _connected(self) -> Switch:
        if self._switch is None or not self._ready.is_set():
            raise SwitchUnavailable(f"no ready P4Runtime connection to {self.topology.address}{self._why()}")
        return self._switch

    def _why(self) -> str:
        return f" (last attempt to program it: {self._last_error})" if self._last_error else ""

    # --- JobProgrammer ---------------------------------------------------------------------------------------

    def install_job(self, job: Job) -> None:
        self._call(self._install_job(job))

    async def _install_job(self, job: Job) -> None:
        assert self._lock is not None
        async with self._lock:
            switch = self._connected()
            if self._pending_deletes:
                for old in self._pending_deletes:
                    await self._delete(switch, job_keys(old))
                self._pending_deletes.clear()
            try:
                await self._insert(switch, job_entries(job))
            except SwitchError:
                # Take back whatever part of the job got in, so the job id can be reused later.
                try:
                    await self._delete(switch, job_keys(job))
                except SwitchError:
                    self._pending_deletes.append(job)
                raise
            self._jobs[job.job_id] = job

    def remove_job(self, job: Job) -> None:
        try:
            self._call(self._remove_job(job))
        except SwitchError as ex:
            log.warning("could not delete job %r from the switch now (%s); will retry", job.name, ex)

    async def _remove_job(self, job: Job) -> None:
        assert self._lock is not None
        async with self._lock:
            self._jobs.pop(job.job_id, None)
            try:
                await self._delete(self._connected(), job_keys(job))
            except SwitchError:
                self._pending_deletes.append(job)
                raise

    # --- reads ----------------------------------------------------------------------------------------------

    def read_table(self, name: str) -> list[P4TableEntry]:
        """Every entry of a table as the switch holds it (for inspection and tests)."""
        return self._call(self._read_table(name))

    async def _read_table(self, name: str) -> list[P4TableEntry]:
        switch = self._connected()
        try:
            return [entry async for entry in switch.read(P4TableEntry(name))]
        except P4ClientError as ex:
            raise translate(ex, f"read table {name}") from None

    # --- counters --------------------------------------------------------------------------------------------

    def read_counter(self, name: str, indices: Sequence[int] | None = None) -> dict[int, tuple[int, int]]:
        """index -> (packets, bytes) of a counter array: all of it, or only ``indices``."""
        return self._call(self._read_counter(name, indices))

    async def _read_counter(self, name: str, indices: Sequence[int] | None) -> dict[int, tuple[int, int]]:
        switch = self._connected()
        if indices is None:
            query: list[P4CounterEntry] = [P4CounterEntry(name)]
        else:
            query = [P4CounterEntry(name, index=i) for i in indices]
        values: dict[int, tuple[int, int]] = {}
        try:
            async for entry in switch.read(query):
                if entry.index is not None:
                    values[entry.index] = (entry.packet_count, entry.byte_count)
        except P4ClientError as ex:
            raise translate(ex, f"read counter {name}") from None
        return values

    # --- the bridge from threads to the loop -----------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise SwitchUnavailable("the P4Runtime client is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        timeout = self._call_timeout if timeout is None else timeout
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SwitchError("P4Runtime request", "DEADLINE_EXCEEDED", f"no answer within {timeout:g} s") from None
        except concurrent.futures.CancelledError:
            raise SwitchUnavailable("the P4Runtime request was cancelled (connection closing)") from None
