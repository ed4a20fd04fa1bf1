"""The application layer: jobs, their workers and keys, slot ranges, epochs, joins, leaves and leases.

Testable without a switch: everything the switch must know is handed to a ``JobProgrammer`` (``switch.py``
implements it over P4Runtime; tests use a recorder).
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from netagg.constants import KEY_BITS, LANE_COUNTS, MAX_JOBS, MAX_WORKERS
from netagg.wire import size_for_lanes

from .epochs import EpochCounter, EpochSpaceExhausted
from .errors import (
    BadLease,
    BadPort,
    BadSlotCount,
    BadTimeout,
    ConfigError,
    DuplicateEndpoint,
    DuplicateRank,
    EpochsExhausted,
    JobAlreadyStarted,
    JobIdsExhausted,
    JoinAborted,
    JoinTimeout,
    MacMismatch,
    NotJobOwner,
    ParameterMismatch,
    PoolExhausted,
    RankOutOfRange,
    UnknownHost,
    UnknownJob,
    UnknownRank,
    UnsupportedLanes,
    WorldSizeMismatch,
    WorldSizeOutOfRange,
)
from .pool import PoolFull, SlotPool, SlotRange
from .topology import ZERO_MAC, Topology

log = logging.getLogger(__name__)

#: Longest a join may wait for the other ranks.
MAX_JOIN_TIMEOUT = 3600.0
#: Shortest lease a join may ask for (a longer one than the configured lease is cut to it).
MIN_LEASE_SECONDS = 0.5
#: How many ended jobs are remembered, to say why a later heartbeat or leave gets 404.
_ENDED_MEMORY = 1024


@dataclass(frozen=True, slots=True)
class JoinRequest:
    job: str
    world_size: int
    rank: int
    addr: str
    port: int
    lanes: int
    mac: str | None = None
    slots: int | None = None  # None: the configured default
    timeout: float = 60.0
    lease_seconds: float | None = None  # None: the configured lease; else bounded to [MIN_LEASE_SECONDS, it]
    owner: str = ""  # the name of the credential the request came with ("" in-process, without the job API)


def new_key(randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A worker's data-plane key: random, never 0, so that a zeroed or unset header field never matches."""
    while True:
        key = randbits(KEY_BITS)
        if key:
            return key


@dataclass(frozen=True, slots=True)
class Worker:
    rank: int  # also the worker id on the switch and the multicast replica's instance
    addr: str
    udp_port: int
    mac: str
    switch_port: int
    #: The secret the switch checks in the worker's UPDATEs and puts in its RESULTs (docs/security.md). Told to
    #: this rank alone, in its join answer: kept out of reprs so that no log line or error message shows it.
    key: int = field(repr=False)


@dataclass(frozen=True)
class Job:
    """An admitted job, as the switch must be programmed for it."""

    name: str
    job_id: int
    world_size: int
    lanes: int
    pool: SlotRange
    epoch: int
    workers: tuple[Worker, ...]  # index = rank

    @property
    def size_code(self) -> int:
        return size_for_lanes(self.lanes)


@dataclass(frozen=True, slots=True)
class Admission:
    """What a rank learns when its job has been admitted."""

    job: Job
    worker_id: int
    switch_mac: str
    switch_addr: str
    switch_port: int
    lease_seconds: float  # granted to this rank
    switch_generation: int  # changes when the switch lost its registers (docs/controller.md, "Switch lifecycle")

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job.name,
            "job_id": self.job.job_id,
            "worker_id": self.worker_id,
            "world_size": self.job.world_size,
            "lanes": self.job.lanes,
            "slots": self.job.pool.slots,
            "epoch": self.job.epoch,
            "lease_seconds": self.lease_seconds,
            "switch_generation": self.switch_generation,
            "switch": {"mac": self.switch_mac, "addr": self.switch_addr, "port": self.switch_port},
            "key": self.job.workers[self.worker_id].key,  # this rank's own key only
        }


class JobProgrammer(Protocol):
    """What the application layer needs from the switch layer."""

    def install_job(self, job: Job) -> None:
        """Install every entry of the job; raises SwitchError (nothing of the job stays installed then)."""

    def remove_job(self, job: Job) -> None:
        """Delete every entry of the job; must not raise (the switch layer retries what it could not delete)."""


@dataclass
class _Pending:
    name: str
    world_size: int
    lanes: int
    slots: int
    job_id: int
    pool: SlotRange
    owner: str = ""
    workers: dict[int, Worker] = field(default_factory=dict)
    leases: dict[int, float] = field(default_factory=dict)  # granted, by rank
    state: str = "joining"  # joining -> installing -> active | failed
    error: Exception | None = None
    job: Job | None = None


@dataclass
class _Active:
    job: Job
    last_seen: dict[int, float]
    leases: dict[int, float]  # granted, by rank
    owner: str = ""
    left: set[int] = field(default_factory=set)


class JobManager:
    """Admits, tracks and tears down jobs. Thread-safe; join() blocks its caller until the job is complete."""

    def __init__(
        self,
        topology: Topology,
        programmer: JobProgrammer,
        *,
        lease_seconds: float | None = None,
        epochs: EpochCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_admitted: Callable[[Job], None] | None = None,
        on_teardown: Callable[[Job], None] | None = None,
        switch_generation: Callable[[], int] | None = None,
    ) -> None:
        """``switch_generation`` reads the switch layer's pipeline generation (0 when there is none)."""
        self.topology = topology
        self.lease_seconds = topology.lease_seconds if lease_seconds is None else lease_seconds
        if not math.isfinite(self.lease_seconds) or self.lease_seconds <= 0:
            # NaN would make every lease comparison false: no job would ever expire.
            raise ConfigError(f"lease {self.lease_seconds} s must be a finite number of seconds > 0")
        #: Shared with the switch layer, which reports pipeline pushes to it (``service.py`` wires them).
        self.epochs = EpochCounter() if epochs is None else epochs
        self._programmer = programmer
        self._clock = clock
        self._on_admitted = on_admitted
        self._on_teardown = on_teardown
        self._switch_generation = switch_generation or (lambda: 0)
        self._pool = SlotPool(topology.pool_slots)
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._active: dict[str, _Active] = {}
        self._job_ids: set[int] = set()  # in use by pending, active or tearing-down jobs
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # --- joining ---------------------------------------------------------------------------------------------

    def join(self, req: JoinRequest) -> Admission:
        """Register one rank; blocks until every rank joined and the job is installed, or the deadline passes."""
        worker = self._validate(req)
        lease = self._grant_lease(req)
        timeout = min(max(req.timeout, 0.0), MAX_JOIN_TIMEOUT)
        deadline = time.monotonic() + timeout
        with self._cond:
            active = self._active.get(req.job)
            if active is not None:
                if active.owner != req.owner:
                    raise NotJobOwner(req.job, req.rank, "join")
                raise JobAlreadyStarted(req.job, req.rank)
            pending = self._pending.get(req.job)
            if pending is None:
                pending = self._reserve(req)
            else:
                if pending.owner != req.owner:  # before any other check: the job's settings are not theirs to see
                    raise NotJobOwner(req.job, req.rank, "join")
                self._check_consistent(pending, req, worker)
            pending.workers[req.rank] = worker
            pending.leases[req.rank] = lease
            self._ended.pop(req.job, None)
            if len(pending.workers) < pending.world_size:
                return self._wait_admitted(pending, req.rank, deadline, timeout)
            try:
                epoch = self.epochs.take()
            except EpochSpaceExhausted as ex:
                error = EpochsExhausted(req.job, req.rank, ex.last)
                self._drop_pending(pending, error)
                raise error from None
            pending.state = "installing"
            job = Job(
                name=pending.name,
                job_id=pending.job_id,
                world_size=pending.world_size,
                lanes=pending.lanes,
                pool=pending.pool,
                epoch=epoch,
                workers=tuple(pending.workers[r] for r in range(pending.world_size)),
            )
        # The last rank to arrive installs the job, outside the lock: heartbeats of other jobs go on meanwhile.
        try:
            self._programmer.install_job(job)
        except Exception as ex:
            # Whatever went wrong (a SwitchError, or a bug), the other ranks must hear of it and the job's id and
            # slots must come back; the switch layer took back whatever part of the job got in.
            self.epochs.give_back(job.epoch)
            with self._cond:
                self._drop_pending(pending, ex)
            raise
        if self._on_admitted is not None:
            # Before any rank learns it is admitted: counter baselines must precede the job's first packet.
            try:
                self._on_admitted(job)
            except Exception:  # the job is installed: a failed bookkeeping hook must not strand it half-admitted
                log.exception("admission hook failed for job %r; admitting it anyway", job.name)
        with self._cond:
            now = self._clock()
            self._active[job.name] = _Active(job, {r: now for r in range(job.world_size)}, dict(pending.leases),
                                             pending.owner)
            del self._pending[job.name]
            pending.state, pending.job = "active", job
            self._cond.notify_all()
        log.info(
            "job %r admitted: id %d, %d workers, %d lanes, slots %d..%d, epoch %d",
            job.name, job.job_id, job.world_size, job.lanes, job.pool.base, job.pool.end - 1, job.epoch,
        )
        return self._admission(job, req.rank, pending.leases[req.rank])

    def _grant_lease(self, req: JoinRequest) -> float:
        """The lease this rank gets: what it asked for, within [MIN_LEASE_SECONDS, the configured lease]."""
        if req.lease_seconds is None:
            return self.lease_seconds
        asked = req.lease_seconds
        if isinstance(asked, bool) or not isinstance(asked, int | float) or not math.isfinite(asked) or asked <= 0:
            raise BadLease(req.job, req.rank, asked)
        return min(max(float(asked), min(MIN_LEASE_SECONDS, self.lease_seconds)), self.lease_seconds)

    def _validate(self, req: JoinRequest) -> Worker:
        """Checks that need no job state; returns the worker the request describes."""
        if not 1 <= req.world_size <= MAX_WORKERS:
            raise WorldSizeOutOfRange(req.job, req.rank, req.world_size, MAX_WORKERS)
        if not 0 <= req.rank < req.world_size:
            raise RankOutOfRange(req.job, req.rank, req.world_size)
        if req.lanes not in LANE_COUNTS:
            raise UnsupportedLanes(req.job, req.rank, req.lanes, LANE_COUNTS)
        if not 1 <= req.port <= 0xFFFF:
            raise BadPort(req.job, req.rank, req.port)
        host = self.topology.hosts_by_addr.get(req.addr)
        if host is None:
            raise UnknownHost(req.job, req.rank, req.addr, sorted(self.topology.hosts_by_addr))
        mac = host.mac
        if req.mac is not None and host.mac != ZERO_MAC and req.mac.lower() != host.mac:
            raise MacMismatch(req.job, req.rank, req.mac, host.mac)
        slots = self.topology.default_slots if req.slots is None else req.slots
        if not 1 <= slots <= self.topology.pool_slots:
            raise BadSlotCount(req.job, req.rank, slots, self.topology.pool_slots)
        if not isinstance(req.timeout, int | float) or not math.isfinite(req.timeout):
            # A NaN deadline never passes: the partial job would hold its id and slots forever.
            raise BadTimeout(req.job, req.rank, req.timeout)
        # A fresh key per join: a job admitted again (a new job) never reuses the keys of an earlier one.
        return Worker(req.rank, req.addr, req.port, mac, host.port, key=new_key())

    def _reserve(self, req: JoinRequest) -> _Pending:
        """First rank of a job: reserve its job id and slot range now, so the job cannot be starved later."""
        slots = self.topology.default_slots if req.slots is None else req.slots
        job_id = next((i for i in range(MAX_JOBS) if i not in self._job_ids), None)
        if job_id is None:
            raise JobIdsExhausted(req.job, req.rank, len(self._job_ids))
        try:
            pool = self._pool.allocate(slots)
        except PoolFull as ex:
            raise PoolExhausted(req.job, req.rank, ex.wanted, ex.free, ex.largest_free) from None
        self._job_ids.add(job_id)
        pending = _Pending(req.job, req.world_size, req.lanes, slots, job_id, pool, owner=req.owner)
        self._pending[req.job] = pending
        return pending

    def _check_consistent(self, pending: _Pending, req: JoinRequest, worker: Worker) -> None:
        if req.world_size != pending.world_size:
            raise WorldSizeMismatch(req.job, req.rank, req.world_size, pending.world_size)
        if req.lanes != pending.lanes:
            raise ParameterMismatch(req.job, req.rank, "lanes", req.lanes, pending.lanes)
        slots = self.topology.default_slots if req.slots is None else req.slots
        if slots != pending.slots:
            raise ParameterMismatch(req.job, req.rank, "slots", slots, pending.slots)
        if req.rank in pending.workers:
            raise DuplicateRank(req.job, req.rank)
        for other in pending.workers.values():
            if (other.addr, other.udp_port) == (worker.addr, worker.udp_port):
                raise DuplicateEndpoint(req.job, req.rank, worker.addr, worker.udp_port, other.rank)
        if pending.state != "joining":  # pragma: no cover - a full job is never still pending as joining
            raise JobAlreadyStarted(req.job, req.rank)

    def _wait_admitted(self, pending: _Pending, rank: int, deadline: float, timeout: float) -> Admission:
        """Wait (holding the condition) until the job is active, failed, or this rank's deadline passed."""
        while pending.state in ("joining", "installing"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 and pending.state == "joining":
                missing = [r for r in range(pending.world_size) if r not in pending.workers]
                error = JoinTimeout(pending.name, rank, timeout, missing, pending.world_size)
                self._drop_pending(pending, error)
                raise error
            # While installing, keep waiting past the deadline: the install is bounded by the switch's RPC deadline.
            self._cond.wait(remaining if remaining > 0 else 0.05)
        if pending.state == "failed":
            raise JoinAborted(pending.name, rank, str(pending.error))
        assert pending.job is not None
        return self._admission(pending.job, rank, pending.leases[rank])

    def _drop_pending(self, pending: _Pending, error: Exception) -> None:
        """Forget a partial job and free what it reserved (caller holds the condition)."""
        if self._pending.get(pending.name) is pending:
            del self._pending[pending.name]
        self._pool.release(pending.pool)
        self._job_ids.discard(pending.job_id)
        pending.state, pending.error = "failed", error
        self._cond.notify_all()
        log.warning("partial job %r dropped: %s", pending.name, error)

    def _admission(self, job: Job, rank: int, lease: float) -> Admission:
        t = self.topology
        return Admission(job, rank, t.mac, t.addr, t.agg_port, lease, self.switch_generation)

    @property
    def switch_generation(self) -> int:
        """The switch's pipeline generation now: a change since a job's join means the switch lost its rounds."""
        return self._switch_generation()

    # --- running jobs ----------------------------------------------------------------------------------------

    def heartbeat(self, name: str, rank: int, owner: str = "") -> float:
        """Renew the rank's lease; returns the lease granted to it."""
        with self._cond:
            active = self._get_active(name, rank, owner, "send heartbeats for")
            active.last_seen[rank] = self._clock()
            return active.leases[rank]

    def leave(self, name: str, rank: int, owner: str = "") -> int:
        """Mark the rank as gone; tears the job down when every rank left. Returns the ranks still in the job."""
        with self._cond:
            active = self._get_active(name, rank, owner, "leave")
            active.left.add(rank)
            remaining = active.job.world_size - len(active.left)
            if remaining == 0:
                del self._active[name]
        if remaining == 0:
            self._teardown(active.job, "every rank left")
        return remaining

    def _get_active(self, name: str, rank: int, owner: str, action: str) -> _Active:
        active = self._active.get(name)
        if active is None:
            pending = self._pending.get(name)
            if pending is not None and pending.owner != owner:
                raise NotJobOwner(name, rank, action)
            raise UnknownJob(name, self._ended.get(name, "it was never admitted or is still joining"))
        if active.owner != owner:
            raise NotJobOwner(name, rank, action)
        if not 0 <= rank < active.job.world_size:
            raise UnknownRank(name, rank, active.job.world_size)
        return active

    def expire(self) -> list[str]:
        """Tear down every job with a rank silent for longer than the lease; returns their names."""
        now = self._clock()
        expired: list[tuple[Job, str]] = []
        with self._cond:
            for name, active in list(self._active.items()):
                silent = [
                    (now - seen, r)
                    for r, seen in active.last_seen.items()
                    if r not in active.left and now - seen > active.leases[r]
                ]
                if silent:
                    age, rank = max(silent)
                    del self._active[name]
                    why = f"rank {rank} was silent for {age:.1f} s (lease {active.leases[rank]:g} s)"
                    expired.append((active.job, why))
        for job, reason in expired:
            self._teardown(job, reason)
        return [job.name for job, _ in expired]

    def _teardown(self, job: Job, reason: str) -> None:
        """Delete the job's entries, then free its id and range (the job is already out of ``_active``)."""
        if self._on_teardown is not None:
            self._on_teardown(job)  # e.g. read the job's final counters while its id is still its own
        # Delete before freeing: a new job reusing the id must not collide with entries still on the switch.
        self._programmer.remove_job(job)
        # Only now can no packet write the job's epoch any more (until a push, the epoch is not handed out again).
        self.epochs.give_back(job.epoch)
        with self._cond:
            self._pool.release(job.pool)
            self._job_ids.discard(job.job_id)
            self._ended[job.name] = f"torn down: {reason}"
            while len(self._ended) > _ENDED_MEMORY:
                self._ended.popitem(last=False)
        log.info("job %r (id %d) torn down: %s", job.name, job.job_id, reason)

    def shutdown_jobs(self) -> None:
        """Tear down every active job (controller shutdown)."""
        with self._cond:
            jobs = [a.job for a in self._active.values()]
            self._active.clear()
        for job in jobs:
            self._teardown(job, "controller shut down")

    # --- lease reaper ----------------------------------------------------------------------------------------

    def start_reaper(self) -> None:
        """Start the background thread that expires silent jobs."""
        if self._reaper is not None:
            return
        # Often enough for the shortest lease a join may ask for; a pass over the jobs is cheap.
        interval = max(0.02, min(MIN_LEASE_SECONDS, self.lease_seconds) / 4)

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.expire()
                except Exception:  # keep reaping; a bug here must not silently stop lease expiry
                    log.exception("lease check failed")

        self._reaper = threading.Thread(target=run, name="netagg-lease-reaper", daemon=True)
        self._reaper.start()

    def stop_reaper(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout)
            self._reaper = None

    # --- views -----------------------------------------------------------------------------------------------

    def active_jobs(self) -> list[Job]:
        with self._cond:
            return [a.job for a in self._active.values()]

    def describe(self, viewer: str | None = None) -> list[dict[str, Any]]:
        """JSON view of every active and joining job.

        ``viewer`` is the credential asking (None: in-process, sees everything): the workers' addresses and ports
        of a job created with another credential are left out.
        """
        now = self._clock()
        out: list[dict[str, Any]] = []
        with self._cond:
            for active in self._active.values():
                job = active.job
                mine = viewer is None or viewer == active.owner
                out.append({
                    "job": job.name,
                    "state": "active",
                    "job_id": job.job_id,
                    "world_size": job.world_size,
                    "lanes": job.lanes,
                    "pool_base": job.pool.base,
                    "slots": job.pool.slots,
                    "epoch": job.epoch,
                    "workers": [
                        {
                            "rank": w.rank,
                            **({"addr": w.addr, "port": w.udp_port, "switch_port": w.switch_port} if mine else {}),
                            "left": w.rank in active.left,
                            "silent_seconds": round(now - active.last_seen[w.rank], 3),
                            "lease_seconds": active.leases[w.rank],
                        }
                        for w in job.workers
                    ],
                })
            for pending in self._pending.values():
                out.append({
                    "job": pending.name,
                    "state": pending.state,
                    "job_id": pending.job_id,
                    "world_size": pending.world_size,
                    "lanes": pending.lanes,
                    "pool_base": pending.pool.base,
                    "slots": pending.slots,
                    "joined": sorted(pending.workers),
                })
        return out

    def pool_view(self) -> dict[str, int]:
        with self._cond:
            return {"size": self._pool.size, "free": self._pool.free_slots, "epochs_left": self.epochs.remaining}
