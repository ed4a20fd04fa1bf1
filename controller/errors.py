"""Every error the controller reports, in two families.

``RequestError`` and its subclasses are caused by what a host agent asked for (admission errors and the like);
their messages are read by a person and name the job, the rank and the number involved. ``SwitchError`` is the
one type every P4Runtime/gRPC failure is translated into, at the switch boundary (``switch.py``).
``ConfigError`` is a bad topology file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""

    #: HTTP status the job API answers with.
    http_status = 500

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(ControllerError):
    """The topology/config file is malformed or inconsistent."""


# --- the switch boundary -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateFailure:
    """One failed update of a P4Runtime WriteRequest."""

    index: int  # position of the update in the request
    code: str  # gRPC canonical code name, e.g. "ALREADY_EXISTS"
    message: str
    update: str  # what the update was, e.g. "INSERT table workers {...}"


class SwitchError(ControllerError):
    """A P4Runtime request failed (or the switch is unreachable); carries the status code and per-update details."""

    http_status = 502

    def __init__(
        self, operation: str, code: str, message: str, details: Sequence[UpdateFailure] = ()
    ) -> None:
        self.operation = operation
        self.code = code
        self.status_message = message
        self.details = tuple(details)
        text = f"{operation} failed: {code}: {message}"
        for failure in self.details:
            text += f"\n  update {failure.index} ({failure.update}): {failure.code}: {failure.message}"
        super().__init__(text)


class SwitchUnavailable(SwitchError):
    """The controller has no ready P4Runtime connection to the switch right now."""

    http_status = 503

    def __init__(self, reason: str) -> None:
        super().__init__("switch connection", "UNAVAILABLE", reason)


# --- user input ---------------------------------------------------------------------------------------------


class RequestError(ControllerError):
    """The request cannot be served as asked; the caller should fix its input."""

    http_status = 400


class BadRequest(RequestError):
    """The request body is not what the route expects (missing field, wrong type)."""


class RequestTimeout(RequestError):
    """The client did not send its whole request in time."""

    http_status = 408

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the request was not received within {timeout:g} s; send it whole, then wait")


class NoSuchRoute(RequestError):
    http_status = 404

    def __init__(self, method: str, path: str) -> None:
        super().__init__(f"no route {method} {path} (see docs/controller.md)")


class Unauthorized(RequestError):
    """The request carries no valid job API credential."""

    http_status = 401

    def __init__(self, given: bool) -> None:
        super().__init__(
            ("the credential sent is not valid" if given else "the job API needs a credential")
            + ": send 'Authorization: Bearer <token>' with the token of the controller's token file "
            "(docs/security.md)"
        )


class NotJobOwner(RequestError):
    """The job was created (first joined) with another credential: only that one may join, heartbeat or leave it."""

    http_status = 403

    def __init__(self, job: str, rank: int, action: str) -> None:
        self.job, self.rank = job, rank
        super().__init__(
            f"job {job!r} rank {rank}: cannot {action} a job created with another credential; pick another job "
            "name or use the credential that created it"
        )


class UnknownJob(RequestError):
    """No active job by that name (never admitted, already torn down, or expired)."""

    http_status = 404

    def __init__(self, job: str, why: str = "") -> None:
        self.job = job
        super().__init__(f"job {job!r} is not active" + (f": {why}" if why else ""))


class UnknownRank(RequestError):
    """The job is active but has no such rank."""

    http_status = 404

    def __init__(self, job: str, rank: int, world_size: int) -> None:
        self.job, self.rank = job, rank
        super().__init__(f"job {job!r} has no rank {rank} (its ranks are 0..{world_size - 1})")


class AdmissionError(RequestError):
    """A join cannot be admitted."""


class DuplicateRank(AdmissionError):
    http_status = 409

    def __init__(self, job: str, rank: int) -> None:
        self.job, self.rank = job, rank
        super().__init__(f"job {job!r}: rank {rank} has already joined")


class WorldSizeMismatch(AdmissionError):
    http_status = 409

    def __init__(self, job: str, rank: int, world_size: int, expected: int) -> None:
        self.job, self.rank, self.world_size, self.expected = job, rank, world_size, expected
        super().__init__(
            f"job {job!r}: rank {rank} says the world size is {world_size}, "
            f"but the ranks that joined before say {expected}"
        )


class ParameterMismatch(AdmissionError):
    """Ranks of one job disagree on a job-wide setting other than the world size (lanes, slots)."""

    http_status = 409

    def __init__(self, job: str, rank: int, name: str, value: int, expected: int) -> None:
        self.job, self.rank = job, rank
        super().__init__(
            f"job {job!r}: rank {rank} asks for {name} = {value}, "
            f"but the ranks that joined before asked for {expected}"
        )


class WorldSizeOutOfRange(AdmissionError):
    def __init__(self, job: str, rank: int, world_size: int, maximum: int) -> None:
        self.job, self.rank, self.world_size = job, rank, world_size
        super().__init__(
            f"job {job!r}: rank {rank} asks for a world size of {world_size}; it must be 1..{maximum}"
        )


class RankOutOfRange(AdmissionError):
    def __init__(self, job: str, rank: int, world_size: int) -> None:
        self.job, self.rank, self.world_size = job, rank, world_size
        super().__init__(f"job {job!r}: rank {rank} is out of range for a world size of {world_size} "
                         f"(ranks are 0..{world_size - 1})")


class BadSlotCount(AdmissionError):
    def __init__(self, job: str, rank: int, slots: int, pool_slots: int) -> None:
        self.job, self.rank, self.slots = job, rank, slots
        super().__init__(
            f"job {job!r}: rank {rank} asks for {slots} slots; a job may have 1..{pool_slots}"
        )


class BadTimeout(AdmissionError):
    def __init__(self, job: str, rank: int, timeout: object) -> None:
        self.job, self.rank, self.timeout = job, rank, timeout
        super().__init__(
            f"job {job!r}: rank {rank} gives a join timeout of {timeout!r}; it must be a finite number of seconds"
        )


class BadLease(AdmissionError):
    def __init__(self, job: str, rank: int, lease: object) -> None:
        super().__init__(f"job {job!r} rank {rank}: lease_seconds {lease!r} must be a finite number of seconds > 0")


class PoolExhausted(AdmissionError):
    http_status = 503

    def __init__(self, job: str, rank: int, wanted: int, free: int, largest_free: int) -> None:
        self.job, self.rank, self.wanted, self.free, self.largest_free = job, rank, wanted, free, largest_free
        super().__init__(
            f"job {job!r}: rank {rank} asked for {wanted} slots, but only {free} slots of the pool are free "
            f"(largest contiguous range: {largest_free}); wait for a job to finish or ask for fewer"
        )


class JobIdsExhausted(AdmissionError):
    http_status = 503

    def __init__(self, job: str, rank: int, in_use: int) -> None:
        self.job, self.rank = job, rank
        super().__init__(f"job {job!r}: rank {rank} cannot be admitted: all {in_use} job ids are in use")


class EpochsExhausted(AdmissionError):
    """Every job epoch was handed out since the pipeline was pushed; reusing one could mix jobs' sums."""

    http_status = 503

    def __init__(self, job: str, rank: int, last_epoch: int) -> None:
        self.job, self.rank, self.last_epoch = job, rank, last_epoch
        super().__init__(
            f"job {job!r}: rank {rank} cannot be admitted: every job epoch up to {last_epoch} was handed out since "
            f"the switch pipeline was pushed, and reusing one could let a slot left by an earlier job count as "
            f"this job's. Restart the switch pipeline (restart the controller: it pushes the pipeline at start, "
            f"which resets the epochs), then join again"
        )


class UnknownHost(AdmissionError):
    def __init__(self, job: str, rank: int, addr: str, known: Sequence[str]) -> None:
        self.job, self.rank, self.addr = job, rank, addr
        listing = ", ".join(known) if known else "none"
        super().__init__(
            f"job {job!r}: rank {rank} joins from {addr}, which is not a host of the topology (hosts: {listing})"
        )


class BadPort(AdmissionError):
    def __init__(self, job: str, rank: int, port: object) -> None:
        self.job, self.rank, self.port = job, rank, port
        super().__init__(f"job {job!r}: rank {rank} gives UDP port {port!r}; it must be 1..65535")


class DuplicateEndpoint(AdmissionError):
    http_status = 409

    def __init__(self, job: str, rank: int, addr: str, port: int, other_rank: int) -> None:
        self.job, self.rank = job, rank
        super().__init__(
            f"job {job!r}: rank {rank} uses {addr}:{port}, which rank {other_rank} already uses; "
            f"every worker needs its own UDP port"
        )


class MacMismatch(AdmissionError):
    def __init__(self, job: str, rank: int, mac: str, expected: str) -> None:
        self.job, self.rank = job, rank
        super().__init__(
            f"job {job!r}: rank {rank} says its MAC is {mac}, but the topology has {expected} for its address"
        )


class UnsupportedLanes(AdmissionError):
    def __init__(self, job: str, rank: int, lanes: object, supported: Sequence[int]) -> None:
        self.job, self.rank, self.lanes = job, rank, lanes
        choices = ", ".join(str(n) for n in supported)
        super().__init__(
            f"job {job!r}: rank {rank} asks for {lanes} lanes per packet; the switch supports {choices}"
        )


class JobAlreadyStarted(AdmissionError):
    http_status = 409

    def __init__(self, job: str, rank: int) -> None:
        self.job, self.rank = job, rank
        super().__init__(
            f"job {job!r} has already started (every rank joined); rank {rank} cannot join it. "
            f"Leave it with every rank, or use a new job name"
        )


class JoinTimeout(AdmissionError):
    http_status = 408

    def __init__(self, job: str, rank: int, timeout: float, missing: Sequence[int], world_size: int) -> None:
        self.job, self.rank, self.missing = job, rank, tuple(missing)
        shown = ", ".join(str(r) for r in self.missing[:16]) + (" ..." if len(self.missing) > 16 else "")
        super().__init__(
            f"job {job!r}: rank {rank} waited {timeout:g} s, but {len(self.missing)} of {world_size} ranks "
            f"never joined (missing: {shown}); the partial job was dropped, retry the join"
        )


class JoinAborted(AdmissionError):
    """Another rank's failure (its deadline, a switch error) dropped the partial job this rank was waiting in."""

    http_status = 409

    def __init__(self, job: str, rank: int, reason: str) -> None:
        self.job, self.rank = job, rank
        super().__init__(f"job {job!r}: rank {rank}'s join was abandoned: {reason}; retry the join")
