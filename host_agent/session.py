"""What joining a job yields: the admission the controller granted, as plain data.

The controller's job API answers a join with a JSON object; ``JoinResult.from_dict`` reads it. Tests and tools
that run without a controller build a ``JoinResult`` by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from netagg.constants import AGG_UDP_PORT, MAX_WORKERS, POOL_SLOTS
from netagg.host_agent.errors import JoinError
from netagg.wire import U32_MAX, size_for_lanes

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class SwitchEndpoint:
    """Where UPDATEs go: the switch's aggregation MAC, IPv4 address and UDP port."""

    mac: str
    addr: str
    port: int = AGG_UDP_PORT


@dataclass(frozen=True, slots=True)
class JoinResult:
    """One worker's admission to a job."""

    job: str  # the job's name, as the workers called it
    job_id: int  # the job byte on the wire
    worker_id: int
    world_size: int
    lanes: int  # admitted lanes per packet
    slots: int  # slots of the pool granted to the job (every worker uses slot numbers 0..slots-1)
    epoch: int
    switch: SwitchEndpoint
    rank: int = 0
    lease_seconds: float | None = None  # the controller drops a worker whose heartbeats stop for this long
    # The worker's data-plane key: every UPDATE carries it (the switch drops one with another key) and every RESULT
    # for this worker carries it back (the agent ignores one with another key). 0 only for hand-built admissions
    # whose switch tables say 0 too; from_answer requires the controller's.
    key: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.job_id <= 0xFF:
            raise JoinError(f"job id {self.job_id} of job {self.job!r} does not fit the wire's job byte")
        if not 1 <= self.world_size <= MAX_WORKERS:
            raise JoinError(f"world size {self.world_size} of job {self.job!r} is not in 1..{MAX_WORKERS}")
        if not 0 <= self.worker_id < self.world_size:
            raise JoinError(f"worker id {self.worker_id} is outside world size {self.world_size}")
        if not 0 <= self.key <= U32_MAX:
            raise JoinError(f"key of job {self.job!r} rank {self.rank} does not fit in 32 bits")
        if not 1 <= self.slots <= POOL_SLOTS:
            raise JoinError(f"granted {self.slots} slots to job {self.job!r}; expected 1..{POOL_SLOTS}")
        size_for_lanes(self.lanes)  # raises WireError for a lane count the wire cannot carry

    @property
    def size_code(self) -> int:
        return size_for_lanes(self.lanes)

    @classmethod
    def from_answer(cls, answer: Any, *, job: str, rank: int) -> JoinResult:
        """Read the controller's join answer: its client's JoinResult object, or the JSON object as a mapping."""

        def get(obj: Any, name: str, default: Any = _MISSING) -> Any:
            if isinstance(obj, Mapping):
                value = obj.get(name, default)
            else:
                value = getattr(obj, name, default)
            if value is _MISSING:
                raise KeyError(name)
            return value

        try:
            sw = get(answer, "switch")
            lease = get(answer, "lease_seconds", None)
            return cls(
                job=job,
                job_id=int(get(answer, "job_id")),
                worker_id=int(get(answer, "worker_id")),
                world_size=int(get(answer, "world_size")),
                lanes=int(get(answer, "lanes")),
                slots=int(get(answer, "slots")),
                epoch=int(get(answer, "epoch")),
                switch=SwitchEndpoint(
                    mac=str(get(sw, "mac")),
                    addr=str(get(sw, "addr")),
                    port=int(get(sw, "port", AGG_UDP_PORT)),
                ),
                rank=rank,
                lease_seconds=None if lease is None else float(lease),
                key=int(get(answer, "key")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            hint = " (a controller older than wire format v2 sends no key)" if str(exc) == "'key'" else ""
            raise JoinError(
                f"the controller's join answer for job {job!r} rank {rank} is malformed: {exc!r}{hint}"
            ) from exc


class JobApi(Protocol):
    """The part of the controller's job API client the agent uses (``netagg.controller.client``)."""

    def join(
        self,
        job: str,
        *,
        world_size: int,
        rank: int,
        addr: str,
        port: int,
        lanes: int,
        mac: str | None = None,
        slots: int | None = None,
        timeout: float = 60.0,
    ) -> Any:
        """Blocks until every rank joined; returns an object or mapping that ``JoinResult.from_answer`` reads."""

    def leave(self, job: str, rank: int) -> Any: ...

    def heartbeat(self, job: str, rank: int) -> Any: ...
