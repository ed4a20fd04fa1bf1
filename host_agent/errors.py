"""Errors of the host agent, classified by what the caller should do about them.

* ``AgentInputError``: the tensor or an option is unusable as given; fix the call (nothing was sent).
* ``AllReduceTimeout``: the job's stream stalled (a peer stopped, the switch or network lost too much); the
  client is broken afterwards and every later operation fails with ``AgentBrokenError``. Recover by leaving and
  joining the job again on every worker (a new admission gets a new epoch, so stale switch state cannot leak in).
* ``AgentClosedError``: the client was closed (or failed) before the operation finished.
* ``JoinError``: the controller refused or could not be reached when joining.
* ``JobLostError``: the controller dropped the job while the client was joined (e.g. heartbeats stopped reaching
  it for a whole lease); the client is broken afterwards, as after a timeout.
* ``SwitchRestartedError``: the switch restarted while the client was joined (its registers, and so the job's
  rounds in flight, are gone); every in-flight and later all-reduce fails with it. Leave and join again.
* ``CollectiveMismatchError``: the ranks did not issue the same collective at the same point of the stream (the
  switch flagged the round MISMATCH); fix the program so every rank issues the same all-reduces in the same order.
* ``CollectiveAbortedError``: a rank gave up on the collective (a local error there, such as bad input); its own
  error says why. After either, as after a timeout, the client is broken: every later operation fails with
  ``AgentBrokenError``, on every rank, instead of adding chunks of different collectives together.
"""

from __future__ import annotations

from collections.abc import Sequence

from netagg.host_agent.collective import Collective, label


class AgentError(Exception):
    """Base of every error the host agent raises on purpose."""


class AgentInputError(AgentError, ValueError):
    """A tensor or option the agent cannot use; the message names the setting involved.

    ``op_index`` is set when the error belongs to an all-reduce that took its place in the job's stream (the
    other ranks will run it): this rank then sent an ABORT for it, so the other ranks fail it too.
    """

    def __init__(self, message: str, *, op_index: int | None = None) -> None:
        super().__init__(message)
        self.op_index = op_index


class JoinError(AgentError):
    """Joining the job through the controller failed."""


class JobLostError(AgentError):
    """The controller no longer knows the job (its lease expired or it was torn down): the switch forgot it too."""


class AgentClosedError(AgentError):
    """The client was closed before the operation completed."""


class AgentBrokenError(AgentClosedError):
    """An earlier operation failed and the job's stream can no longer be continued; join again."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(
            "this client's job is unusable: an earlier all-reduce failed and the ranks' streams can no longer be "
            f"kept in step (leave and join again on every rank): {cause}"
        )


class SwitchRestartedError(JobLostError, AgentBrokenError):
    """The switch restarted during the job: rounds some ranks had finished can never complete; join again.

    The controller reports a new switch generation (it re-pushed the pipeline, which zeroes every register) in
    its heartbeat answers; ``joined`` and ``now`` are the generations at the join and now.
    """

    def __init__(self, *, job: str, rank: int, joined: int, now: int) -> None:
        self.job, self.rank, self.joined, self.now = job, rank, joined, now
        self.cause = None
        AgentClosedError.__init__(
            self,
            f"the switch restarted during job {job!r} (rank {rank}; switch generation {joined} at the join, now "
            f"{now}): its registers were zeroed, so all-reduces in flight cannot complete and the job's stream "
            "cannot continue. Leave and join again on every rank.",
        )


class StreamDivergedError(AgentError):
    """The ranks' streams diverged at one collective: every rank fails it, and the client is broken afterwards.

    ``op_index`` is the client's all-reduce the failure was seen on, ``descriptor`` its ``Collective``; ``active``
    lists this rank's unfinished all-reduces at that moment (index, descriptor), oldest first, so a framework shim
    can compare them with the other ranks' and name both sides.
    """

    def __init__(
        self,
        message: str,
        *,
        job: str,
        rank: int,
        op_index: int,
        descriptor: Collective,
        active: Sequence[tuple[int, Collective]] = (),
    ) -> None:
        super().__init__(message)
        self.job = job
        self.rank = rank
        self.op_index = op_index
        self.descriptor = descriptor
        self.active = tuple(active)


_REJOIN = "The job's stream cannot continue: leave and join again on every rank."


class CollectiveMismatchError(StreamDivergedError):
    """The ranks did not issue the same collective at the same point of the stream (the switch said MISMATCH)."""

    def __init__(
        self,
        *,
        job: str,
        job_id: int,
        rank: int,
        op_index: int,
        descriptor: Collective,
        theirs: str,
        active: Sequence[tuple[int, Collective]] = (),
    ) -> None:
        super().__init__(
            f"{label(op_index, descriptor)} of job {job!r} (id {job_id}) on rank {rank}: the ranks did not issue the "
            f"same collective at this point of the stream: this rank has {descriptor.shape_text()} (op "
            f"{descriptor.op_id:#010x}); the round's first contribution carried {theirs}. Every rank must issue the "
            f"same all-reduces (element count, dtype) in the same order. {_REJOIN}",
            job=job,
            rank=rank,
            op_index=op_index,
            descriptor=descriptor,
            active=active,
        )


class CollectiveAbortedError(StreamDivergedError):
    """A rank gave up on a collective (a local error there) while others ran it; every rank fails it.

    ``local_error`` is set on the rank that gave up (its own error's text), None on the others.
    """

    def __init__(
        self,
        *,
        job: str,
        job_id: int,
        rank: int,
        op_index: int,
        descriptor: Collective,
        local_error: str | None = None,
        active: Sequence[tuple[int, Collective]] = (),
    ) -> None:
        self.local_error = local_error
        if local_error is None:
            text = (
                f"{label(op_index, descriptor)} of job {job!r} (id {job_id}) on rank {rank} failed: another rank "
                f"gave up on it (a local error there, such as bad input; that rank's error says why); this rank has "
                f"{descriptor.shape_text()}. {_REJOIN}"
            )
        else:
            text = (
                f"rank {rank} of job {job!r} (id {job_id}) gave up on {label(op_index, descriptor)} ({local_error}) "
                f"while other ranks ran it. {_REJOIN}"
            )
        super().__init__(text, job=job, rank=rank, op_index=op_index, descriptor=descriptor, active=active)


class AllReduceTimeout(AgentError, TimeoutError):
    """An all-reduce did not complete within its deadline."""

    def __init__(
        self,
        *,
        job: str,
        job_id: int,
        rank: int,
        op_index: int,
        waited: float,
        elapsed: float,
        done_chunks: int,
        total_chunks: int,
        deadline: float,
        missing: Sequence[tuple[int, int]],
        unsent_chunks: int,
        retransmissions: int,
    ) -> None:
        self.job = job
        self.job_id = job_id
        self.rank = rank
        self.op_index = op_index
        self.waited = waited
        self.elapsed = elapsed
        self.missing = tuple(missing)
        self.unsent_chunks = unsent_chunks
        shown = ", ".join(f"slot {slot} tsi {tsi}" for slot, tsi in self.missing[:5])
        more = f", ... ({len(self.missing) - 5} more)" if len(self.missing) > 5 else ""
        super().__init__(
            f"all-reduce #{op_index} of job {job!r} (id {job_id}) on rank {rank} did not complete: waited "
            f"{waited:.2f} s without progress (deadline {deadline:.2f} s; {elapsed:.2f} s since it started, "
            f"{done_chunks} of {total_chunks} chunks done); {len(self.missing)} slot(s) still missing a RESULT "
            f"[{shown}{more}], {unsent_chunks} chunk(s) not sent yet, {retransmissions} retransmission(s). "
            "A peer may have stopped or not issued the same all-reduce, or the switch is unreachable."
        )
