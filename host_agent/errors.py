"""Errors of the host agent, classified by what the caller should do about them.

* ``AgentInputError``: the tensor or an option is unusable as given; fix the call (nothing was sent).
* ``AllReduceTimeout``: the job's stream stalled (a peer stopped, the switch or network lost too much); the
  client is broken afterwards and every later operation fails with ``AgentBrokenError``. Recover by leaving and
  joining the job again on every worker (a new admission gets a new epoch, so stale switch state cannot leak in).
* ``AgentClosedError``: the client was closed (or failed) before the operation finished.
* ``JoinError``: the controller refused or could not be reached when joining.
* ``JobLostError``: the controller dropped the job while the client was joined (e.g. heartbeats stopped reaching
  it for a whole lease); the client is broken afterwards, as after a timeout.
"""

from __future__ import annotations

from collections.abc import Sequence


class AgentError(Exception):
    """Base of every error the host agent raises on purpose."""


class AgentInputError(AgentError, ValueError):
    """A tensor or option the agent cannot use; the message names the setting involved."""


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
            f"the all-reduce stream failed earlier and cannot continue (leave and join again): {cause}"
        )


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
