"""netagg as a ``torch.distributed`` backend: ``import netagg.host_agent.torch_backend`` registers "netagg".

    import netagg.host_agent.torch_backend  # noqa: F401  (registers the backend)
    dist.init_process_group("netagg")       # env:// rendezvous, as with torchrun

all_reduce with SUM or AVG of float32, float16, bfloat16 and int32 CPU tensors goes through the switch. Every other
collective (other reduce ops and dtypes, broadcast, all_gather, reduce_scatter, all_to_all, barrier, point-to-point,
object collectives) is served by an internal gloo group on the same store, so any program that runs on gloo runs on
netagg. docs/torch.md lists which path serves which call.

Configuration: ``NetaggOptions`` passed as ``pg_options`` to ``init_process_group``/``new_group``, else environment
variables (``NETAGG_CONTROLLER``, ``NETAGG_JOB``, ``NETAGG_BIND``, ``NETAGG_LANES``, ``NETAGG_WINDOW``,
``NETAGG_DEADLINE``, ``NETAGG_JOIN_TIMEOUT``). Without ``NETAGG_JOB`` the group's rank 0 makes a unique job name and
shares it through the rendezvous store.

Mismatched calls never sum silently: the group counts every collective it is asked for (gloo-served ones too), and
each switch all-reduce carries (that count, numel, dtype) as its descriptor, so ranks that call different
collectives, or the same one with different tensors, fail it on every rank. The first such failure is explained
through the rendezvous store: each rank publishes its side, and the error names every rank's.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from netagg.controller.client import ControllerClient
from netagg.host_agent.client import DEFAULT_DEADLINE, DEFAULT_LANES, AllReduceClient
from netagg.host_agent.collective import Collective, dtype_name
from netagg.host_agent.divergence import diverged_record, explain, local_record
from netagg.host_agent.errors import AgentBrokenError, AgentError, AgentInputError, StreamDivergedError
from netagg.host_agent.session import JobApi

log = logging.getLogger(__name__)

BACKEND_NAME = "netagg"

#: Callbacks of completed all-reduces that may block at once (nested waits inside comm hooks) per group.
CALLBACK_THREADS = 16

#: dtypes whose SUM/AVG all_reduce goes through the switch.
SWITCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int32)
_SWITCH_OPS = (dist.ReduceOp.SUM, dist.ReduceOp.AVG)

#: Seconds a rank whose all-reduce failed waits for the other ranks' reports before naming what it has.
FAILURE_REPORT_WAIT = 5.0
#: Store prefix (within the group's store) of the per-rank failure reports.
_FAILURE_PREFIX = "netagg/failure"

#: Collectives served by the internal gloo group: ProcessGroup method torch calls -> gloo Backend method.
DELEGATED = {
    "allgather": "allgather",
    "allgather_coalesced": "allgather_coalesced",
    "all_gather_single": "_allgather_base",
    "_allgather_base": "_allgather_base",
    "allreduce_coalesced": "allreduce_coalesced",
    "alltoall": "alltoall",
    "all_to_all_single": "alltoall_base",
    "alltoall_base": "alltoall_base",
    "barrier": "barrier",
    "broadcast": "broadcast",
    "gather": "gather",
    "reduce": "reduce",
    "reduce_scatter": "reduce_scatter",
    "reduce_scatter_single": "_reduce_scatter_base",
    "_reduce_scatter_base": "_reduce_scatter_base",
    "scatter": "scatter",
    "send": "send",
    "recv": "recv",
    "recv_anysource": "recv_anysource",
}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


@dataclass
class NetaggOptions:
    """Settings of a netagg process group; unset fields fall back to the NETAGG_* environment variables."""

    # The job API: its address host:port (NETAGG_CONTROLLER, default 127.0.0.1:9590), or a client object with the
    # job API's methods (netagg.host_agent.session.JobApi), e.g. for tools and tests that run without a controller.
    controller: str | JobApi | None = None
    job: str | None = None  # job name (NETAGG_JOB); default: unique per group, agreed through the store
    bind: str | None = None  # local IPv4 the worker's UDP socket binds to (NETAGG_BIND, default 127.0.0.1)
    lanes: int | None = None  # lanes per packet (NETAGG_LANES, default 256)
    window: int | None = None  # slots in flight (NETAGG_WINDOW, default: the agent's)
    deadline: float | None = None  # seconds an all-reduce may take (NETAGG_DEADLINE, default 30)
    join_timeout: float | None = (
        None  # seconds to wait for every rank to join (NETAGG_JOIN_TIMEOUT, default 120)
    )
    extra: dict[str, Any] = field(default_factory=dict)  # further AllReduceClient options (rto, loss, ...)

    def resolved(self) -> NetaggOptions:
        """A copy with every unset field read from the environment or its default; raises ValueError."""

        def number(value: Any, env: str, default: str, kind: type) -> Any:
            raw = value if value is not None else _env(env, default)
            try:
                return None if raw is None else kind(raw)
            except ValueError:
                raise ValueError(f"{env}={raw!r} is not a valid {kind.__name__}") from None

        return NetaggOptions(
            controller=self.controller or _env("NETAGG_CONTROLLER", "127.0.0.1:9590"),
            job=self.job or _env("NETAGG_JOB"),
            bind=self.bind or _env("NETAGG_BIND", "127.0.0.1"),
            lanes=number(self.lanes, "NETAGG_LANES", str(DEFAULT_LANES), int),
            window=number(self.window, "NETAGG_WINDOW", None, int),  # type: ignore[arg-type]
            deadline=number(self.deadline, "NETAGG_DEADLINE", str(DEFAULT_DEADLINE), float),
            join_timeout=number(self.join_timeout, "NETAGG_JOIN_TIMEOUT", "120", float),
            extra=dict(self.extra),
        )


class _SwitchWork(dist._Work):
    """A torch Work over the agent's future.

    The torch future is completed on a thread of ``callbacks``: torch runs ``then`` callbacks inline in the thread
    that completes a future, and comm hooks (PowerSGD) issue another all-reduce inside such a callback and wait for
    it. Completing on the agent's own completion thread would deadlock (it must finish that second all-reduce);
    a pool of callback threads keeps the agent's threads free whatever the callbacks do.
    """

    def __init__(
        self,
        source: Future[Any],
        result: list[torch.Tensor],
        deadline: float,
        label: str,
        callbacks: ThreadPoolExecutor,
        dist_error: Callable[[BaseException], BaseException],
    ) -> None:
        super().__init__()
        self._source = source
        self._deadline = deadline
        self._label = label
        self._callbacks = callbacks
        self._dist_error = dist_error  # may wait a few seconds for other ranks' reports: never on agent threads
        self._future: torch.futures.Future = torch.futures.Future()
        self._result = result
        source.add_done_callback(self._complete)

    def _complete(self, source: Future[Any]) -> None:
        error = source.exception()
        try:
            if error is None:
                self._callbacks.submit(self._future.set_result, self._result)
            else:
                self._callbacks.submit(self._fail, error)
        except RuntimeError:  # the group is shutting down: complete here, nobody can be waiting in a callback
            if error is None:
                self._future.set_result(self._result)
            else:
                self._future.set_exception(_as_dist_error(error, self._label))

    def _fail(self, error: BaseException) -> None:
        self._future.set_exception(self._dist_error(error))

    def wait(self, timeout: timedelta | None = None) -> bool:
        limit = timeout.total_seconds() if timeout else None
        try:
            # The agent resolves every operation by its own deadline; the bound guards against a bug only.
            self._source.result(timeout=limit if limit else self._deadline * 4 + 60)
        except AgentError as exc:
            raise self._dist_error(exc) from exc
        except TimeoutError as exc:
            raise dist.DistBackendError(f"{self._label}: wait() timed out after {limit} s") from exc
        return True

    def is_completed(self) -> bool:
        return self._source.done()

    def is_success(self) -> bool:
        return self._source.done() and self._source.exception() is None

    def exception(self) -> BaseException | None:
        error = self._source.exception() if self._source.done() else None
        return None if error is None else self._dist_error(error)

    def get_future(self) -> torch.futures.Future:
        return self._future

    def result(self) -> list[torch.Tensor]:
        return self._result


def _as_dist_error(error: BaseException, label: str) -> BaseException:
    if isinstance(error, dist.DistError):
        return error
    return dist.DistBackendError(f"{label}: {error}")


class NetaggProcessGroup(dist.ProcessGroup):
    """A ProcessGroup whose SUM/AVG all_reduce goes through the switch; everything else through gloo."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        size: int,
        timeout: timedelta,
        options: NetaggOptions | None = None,
    ) -> None:
        super().__init__(rank, size)
        self._options = (options or NetaggOptions()).resolved()
        self._gloo = dist.ProcessGroupGloo(dist.PrefixStore("netagg/gloo", store), rank, size, timeout)
        job = self._options.job or self._agree_job_name(store, rank)
        self._job = job
        self._label = f"netagg job {job!r} rank {rank}"
        # Every collective this group is asked for, gloo-served ones too, takes the next number: a rank that routes
        # a call elsewhere than its peers (another dtype, op or device) is then out of step on the switch, and
        # its next switch all-reduce fails instead of meeting a different collective of the others.
        self._seq = itertools.count()
        self._seq_lock = threading.Lock()
        self._reports = dist.PrefixStore(_FAILURE_PREFIX, store)
        self._explained: str | None = None  # the first failure, as named from every rank's report
        self._explain_lock = threading.Lock()
        # Threads that complete torch futures (and so run comm-hook callbacks); see _SwitchWork.
        self._callbacks = ThreadPoolExecutor(
            max_workers=CALLBACK_THREADS, thread_name_prefix=f"netagg-torch-{job}"
        )
        extra = dict(self._options.extra)
        if self._options.window is not None:
            extra["window"] = self._options.window
        self._client = AllReduceClient.join(
            _job_api(self._options.controller),  # type: ignore[arg-type]
            job,
            size,
            rank,
            bind=self._options.bind,  # type: ignore[arg-type]
            lanes=self._options.lanes,  # type: ignore[arg-type]
            join_timeout=self._options.join_timeout,  # type: ignore[arg-type]
            deadline=self._options.deadline,
            **extra,
        )

    @staticmethod
    def _agree_job_name(store: dist.Store, rank: int) -> str:
        key = "netagg/job"
        if rank == 0:
            store.set(key, f"torch-{uuid.uuid4().hex[:12]}")
        return store.get(key).decode()  # blocks until rank 0 has set it (bounded by the store's timeout)

    def getBackendName(self) -> str:
        return BACKEND_NAME

    @property
    def client(self) -> AllReduceClient:
        return self._client

    def next_seq(self) -> int:
        """Number the next collective of this group (every rank numbers its calls the same way)."""
        with self._seq_lock:
            return next(self._seq)

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist._Work:
        seq = self.next_seq()
        # opts.reduceOp is a ReduceOp wrapper; compare its RedOpType (`in` on the wrapper never matches).
        op = getattr(getattr(opts, "reduceOp", None), "op", dist.ReduceOp.SUM)
        if not self._through_switch(tensors, op):
            return self._gloo.allreduce(tensors, opts if opts is not None else dist.AllreduceOptions())
        tensor = tensors[0]
        name = "all_reduce" if op == dist.ReduceOp.SUM else "all_reduce(avg)"
        descriptor = Collective(name, seq, tensor.numel(), dtype_name(tensor.dtype))
        try:
            source: Future[Any] = self._client.allreduce_async(tensor, descriptor=descriptor)
        except AgentInputError as exc:  # a ValueError for torch's caller: fix the call
            if exc.op_index is not None:  # the others run this all-reduce: tell them why it fails
                why = exc.__cause__ if isinstance(exc.__cause__, AgentInputError) else exc
                self._publish(local_record(self.rank(), exc.op_index, descriptor, str(why)))
            raise
        except AgentError as exc:  # broken by an earlier failure, or closed
            raise self._dist_error(exc) from exc
        if op == dist.ReduceOp.AVG:
            source = _then(
                source,
                lambda t: t.div_(self.size()) if t.is_floating_point() else t.floor_divide_(self.size()),
            )
        return _SwitchWork(
            source,
            tensors,
            self._options.deadline or DEFAULT_DEADLINE,
            self._label,
            self._callbacks,
            self._dist_error,
        )

    # --- failures ------------------------------------------------------------------------------------------

    def _dist_error(self, error: BaseException) -> BaseException:
        """The torch error for an agent error; a diverged stream is named from every rank's report."""
        diverged = error.cause if isinstance(error, AgentBrokenError) else error
        if not isinstance(diverged, StreamDivergedError):
            return _as_dist_error(error, self._label)
        explained = self._explain(diverged)
        if diverged is error:
            text = f"{self._label}: {explained}. The group cannot continue: destroy it and create it again."
        else:
            text = (
                f"{self._label}: the group is unusable since an earlier all-reduce failed: {explained}. Destroy "
                "it and create it again."
            )
        return dist.DistBackendError(f"{text} (this rank's agent: {diverged})")

    def _explain(self, error: StreamDivergedError) -> str:
        """Publish this rank's side of the first failure, read the others' (bounded wait), name every side."""
        with self._explain_lock:
            if self._explained is None:
                self._explained = self._exchange(error)
            return self._explained

    def _exchange(self, error: StreamDivergedError) -> str:
        rank = self.rank()
        own = diverged_record(rank, error)
        if getattr(error, "local_error", None) is not None:
            # This rank gave up on it (and published that when it raised): its own error is the whole story.
            return explain(self._job, {rank: local_record(rank, error.op_index, error.descriptor, error.local_error)})
        self._publish(own)
        others = [str(r) for r in range(self.size()) if r != rank]
        try:
            self._reports.wait(others, timedelta(seconds=FAILURE_REPORT_WAIT))
        except (dist.DistError, RuntimeError):
            pass  # a rank that died or is stuck elsewhere: name what the others reported
        records: dict[int, Any] = {rank: own}
        missing = []
        for key in others:
            try:
                if self._reports.check([key]):
                    records[int(key)] = json.loads(self._reports.get(key))
                    continue
            except (dist.DistError, RuntimeError, ValueError) as exc:
                log.warning("%s: reading rank %s's failure report failed: %s", self._label, key, exc)
            missing.append(int(key))
        return explain(self._job, records, missing, FAILURE_REPORT_WAIT)

    def _publish(self, record: dict[str, Any]) -> None:
        """Write this rank's failure report (once: the first failure is the one that explains the rest)."""
        try:
            key = str(self.rank())
            if not self._reports.check([key]):
                self._reports.set(key, json.dumps(record))
        except (dist.DistError, RuntimeError) as exc:  # the store is gone: the local error still stands
            log.warning("%s: publishing a failure report failed: %s", self._label, exc)

    def _through_switch(self, tensors: list[torch.Tensor], op: Any) -> bool:
        return (
            len(tensors) == 1
            and any(op == switch_op for switch_op in _SWITCH_OPS)
            and tensors[0].device.type == "cpu"
            and tensors[0].dtype in SWITCH_DTYPES
        )

    def shutdown(self) -> None:
        """Leave the job (torch calls this on destroy_process_group)."""
        self._client.close()
        self._callbacks.shutdown(wait=False)

    def __del__(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - interpreter shutdown: nobody left to raise to
                log.debug("closing %s at garbage collection failed: %s", self._label, exc)


def _job_api(controller: str | JobApi) -> JobApi:
    return ControllerClient(controller) if isinstance(controller, str) else controller


def _then(source: Future[Any], fn: Any) -> Future[Any]:
    """A future resolved with ``fn(result)`` of ``source`` (on the thread that resolves ``source``)."""
    out: Future[Any] = Future()
    out.set_running_or_notify_cancel()

    def done(f: Future[Any]) -> None:
        error = f.exception()
        if error is not None:
            out.set_exception(error)
            return
        try:
            out.set_result(fn(f.result()))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            out.set_exception(exc)

    source.add_done_callback(done)
    return out


def _delegate(name: str, gloo_name: str) -> Any:
    def method(self: NetaggProcessGroup, *args: Any, **kwargs: Any) -> Any:
        self.next_seq()
        return getattr(self._gloo, gloo_name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"Served by the internal gloo group ({gloo_name})."
    return method


for _name, _gloo_name in DELEGATED.items():
    setattr(NetaggProcessGroup, _name, _delegate(_name, _gloo_name))


def _create(dist_options: Any, backend_options: Any) -> NetaggProcessGroup:
    if backend_options is not None and not isinstance(backend_options, NetaggOptions):
        raise TypeError(
            f"pg_options for the netagg backend must be NetaggOptions, got {type(backend_options).__name__}"
        )
    return NetaggProcessGroup(
        dist_options.store,
        dist_options.group_rank,
        dist_options.group_size,
        dist_options.timeout,
        backend_options,
    )


def register() -> None:
    """Register the "netagg" backend with torch.distributed (idempotent; importing this module does it)."""
    if BACKEND_NAME.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=["cpu"])


register()
