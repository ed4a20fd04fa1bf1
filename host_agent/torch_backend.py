"""netagg as a ``torch.distributed`` backend: ``import netagg.host_agent.torch_backend`` registers "netagg".

    import netagg.host_agent.torch_backend  # noqa: F401  (registers the backend)
    dist.init_process_group("netagg")       # env:// rendezvous, as with torchrun

all_reduce with SUM or AVG of dense float32, float16, bfloat16 and int32 tensors goes through the switch: CPU
tensors where they are, CUDA tensors quantized on the GPU and streamed in pieces (torch_device.py). Every other
collective (other reduce ops and dtypes, sparse tensors, broadcast, all_gather, reduce_scatter, all_to_all,
barrier, point-to-point, object collectives) is served by an internal gloo group on the same store, so any
program that runs on gloo runs on netagg. docs/torch.md lists which path serves which call.

Slots: a group joins its job on the switch at its first switch all-reduce, not when it is created, and gives the
job back when destroyed, when every rank agreed it was idle (``idle_release``), and at interpreter exit; a process
that dies without leaving stops heartbeating and the controller frees its job after the lease.

Configuration: ``NetaggOptions`` passed as ``pg_options`` to ``init_process_group``/``new_group``, else environment
variables (``NETAGG_CONTROLLER``, ``NETAGG_JOB``, ``NETAGG_BIND``, ``NETAGG_LANES``, ``NETAGG_WINDOW``,
``NETAGG_DEADLINE``, ``NETAGG_JOIN_TIMEOUT``, ``NETAGG_IDLE_RELEASE``). Without ``NETAGG_JOB`` the group's rank 0
makes a unique job name and shares it through the rendezvous store.

``NETAGG_ALGORITHM=bml`` (with ``NETAGG_BML_PLAN``, a BCube's address plan) sums those all_reduces with BML between
the ranks' network cards instead of through the switch: integer sums, bit-exact and the same on every rank
(``_BmlPath``); the other calls go to gloo as above.

Mismatched calls never sum silently: the group counts every collective it is asked for (gloo-served ones too), and
each switch all-reduce carries (that count, numel, dtype) as its descriptor, so ranks that call different
collectives, or the same one with different tensors, fail it on every rank. The first such failure is explained
through the rendezvous store: each rank publishes its side, and the error names every rank's.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from netagg.controller.client import ControllerClient
from netagg.host_agent.bml_transport import BmlError, BmlPeers, BmlPlan
from netagg.host_agent.client import DEFAULT_DEADLINE, DEFAULT_LANES, AllReduceClient
from netagg.host_agent.collective import Collective, dtype_name
from netagg.host_agent.divergence import diverged_record, explain, local_record
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentClosedError,
    AgentError,
    AgentInputError,
    StreamDivergedError,
)
from netagg.host_agent.session import JobApi
from netagg.host_agent.torch_device import DEFAULT_BUFFERS, DEFAULT_PIECE_BYTES, DeviceFeeder

log = logging.getLogger(__name__)

BACKEND_NAME = "netagg"

#: Callbacks of completed all-reduces that may block at once (nested waits inside comm hooks) per group.
CALLBACK_THREADS = 16

#: Devices the backend is registered for; tensors on any device but "cpu" go through a host copy.
DEVICES = ("cpu", "cuda")

#: dtypes whose SUM/AVG all_reduce goes through the switch.
SWITCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int32)
_SWITCH_OPS = (dist.ReduceOp.SUM, dist.ReduceOp.AVG)

#: Where tensors on a device are quantized (NetaggOptions.device_path): on the device, in pieces (the default);
#: on the host from one pinned copy; or on the device for host tensors too.
DEVICE_PATHS = ("auto", "host", "always")
#: How a group sums the all_reduces above: through the switch (the default), or BML between the ranks' cards.
ALGORITHMS = ("switch", "bml")
#: Store prefix (within the group's store) where each rank publishes the ports its cards listen on (BML).
_BML_PREFIX = "netagg/bml"

#: Seconds a rank whose all-reduce failed waits for the other ranks' reports before naming what it has.
FAILURE_REPORT_WAIT = 5.0
#: Store prefix (within the group's store) of the per-rank failure reports.
_FAILURE_PREFIX = "netagg/failure"
#: Store prefix of the idle-release decisions: one key per (job generation, last switch all-reduce), set once.
_IDLE_PREFIX = "netagg/idle"
_RELEASE, _KEEP = b"release", b"keep"
#: Default seconds a group's job may go without a switch all-reduce before its ranks give its slots back.
DEFAULT_IDLE_RELEASE = 60.0
#: Seconds between asks for slots while the pool is exhausted (doubling up to the longest), within join_timeout.
POOL_RETRY_FIRST = 0.05
POOL_RETRY_LONGEST = 1.0
#: Default lease asked for at join: a rank that dies without leaving frees its job's slots within this many seconds.
DEFAULT_LEASE = 5.0

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
    # seconds without a switch all-reduce after which the ranks give the job's slots back (and join again at the
    # next one); 0 keeps them until the group is destroyed (NETAGG_IDLE_RELEASE, default 60)
    idle_release: float | None = None
    # seconds the controller keeps the job of a rank whose heartbeats stopped (a process that died without
    # leaving); at most the controller's configured lease (NETAGG_LEASE, default 5)
    lease: float | None = None
    # how SUM/AVG all_reduces of the dtypes above are summed: "switch", or "bml" over a BCube (NETAGG_ALGORITHM,
    # default switch)
    algorithm: str | None = None
    bml_plan: str | None = None  # the BCube's address plan, a JSON file, for "bml" (NETAGG_BML_PLAN)
    # where tensors on a device (a GPU) are quantized: "auto" on their device, streamed in pieces through pinned
    # host buffers (torch_device.py); "host" through one pinned host copy of the whole tensor, quantized by the
    # agent; "always" as "auto", host tensors too (to compare the two paths) (NETAGG_DEVICE_PATH, default auto)
    device_path: str | None = None
    # bytes of one piece of the "auto" path (its pinned host buffer; 4 per block) (NETAGG_DEVICE_PIECE, default 1 MiB)
    device_piece: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further AllReduceClient options (rto, loss, ...)

    def resolved(self) -> NetaggOptions:
        """A copy with every unset field read from the environment or its default; raises ValueError."""

        def number(value: Any, env: str, default: str, kind: type) -> Any:
            raw = value if value is not None else _env(env, default)
            try:
                return None if raw is None else kind(raw)
            except ValueError:
                raise ValueError(f"{env}={raw!r} is not a valid {kind.__name__}") from None

        algorithm = self.algorithm or _env("NETAGG_ALGORITHM") or ALGORITHMS[0]
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm {algorithm!r} (NETAGG_ALGORITHM) is not one of the netagg backend's: "
                f"{', '.join(ALGORITHMS)}"
            )
        device_path = self.device_path or _env("NETAGG_DEVICE_PATH") or DEVICE_PATHS[0]
        if device_path not in DEVICE_PATHS:
            raise ValueError(
                f"device path {device_path!r} (NETAGG_DEVICE_PATH) is not one of {', '.join(DEVICE_PATHS)}"
            )
        return NetaggOptions(
            controller=self.controller or _env("NETAGG_CONTROLLER", "127.0.0.1:9590"),
            job=self.job or _env("NETAGG_JOB"),
            bind=self.bind or _env("NETAGG_BIND", "127.0.0.1"),
            lanes=number(self.lanes, "NETAGG_LANES", str(DEFAULT_LANES), int),
            window=number(self.window, "NETAGG_WINDOW", None, int),  # type: ignore[arg-type]
            deadline=number(self.deadline, "NETAGG_DEADLINE", str(DEFAULT_DEADLINE), float),
            join_timeout=number(self.join_timeout, "NETAGG_JOIN_TIMEOUT", "120", float),
            idle_release=number(self.idle_release, "NETAGG_IDLE_RELEASE", str(DEFAULT_IDLE_RELEASE), float),
            lease=number(self.lease, "NETAGG_LEASE", str(DEFAULT_LEASE), float),
            algorithm=algorithm,
            bml_plan=self.bml_plan or _env("NETAGG_BML_PLAN"),
            device_path=device_path,
            device_piece=number(self.device_piece, "NETAGG_DEVICE_PIECE", str(DEFAULT_PIECE_BYTES), int),
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
        except Exception as exc:  # e.g. the device failed while a piece was prepared (torch_device.py)
            raise self._dist_error(exc) from exc
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


class _BmlPath:
    """all_reduce through BML on a BCube (``algorithm="bml"``): rank r is host r of the plan; no switch, no controller.

    int32 is summed as it is (exact, wrapping as gloo's sum does); float32 through fixed point
    (``BmlPeers.allreduce_float``: bit-exact, the same bits on every rank), float16 and bfloat16 through float32
    staging. The ranks connect at the group's first such all_reduce: each listens on its cards at free ports and
    publishes them through the group's store (a rank that cannot publishes why, so the others fail at once). One
    thread runs the synchronizations in call order; after one fails the group is unusable (a connection may hold
    half a piece), as the switch path's is.
    """

    def __init__(self, options: NetaggOptions, store: dist.Store, rank: int, size: int) -> None:
        path = options.bml_plan
        if not path:
            raise ValueError("NETAGG_ALGORITHM=bml needs the BCube's address plan: set NETAGG_BML_PLAN (a JSON file)")
        plan = BmlPlan.load(path)
        cube = plan.cube
        if cube.hosts != size:
            raise ValueError(
                f"the BML plan {path!r} is BCube(n={cube.n}, k={cube.k}) with {cube.hosts} hosts; the group has "
                f"{size} ranks (rank r is host r: they must be equal)"
            )
        self._label = f"netagg (bml) rank {rank}"
        self._rank, self._size = rank, size
        self._lanes = int(options.lanes or DEFAULT_LANES)
        self._deadline = options.deadline or DEFAULT_DEADLINE
        self._connect_timeout = float(options.join_timeout or 120.0)
        self._peers = BmlPeers(cube, rank, plan.addresses, port=0, timeout=self._deadline)
        self._ports = dist.PrefixStore(_BML_PREFIX, store)
        self._connected = False
        self._broken: str | None = None
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netagg-bml-{rank}")

    def allreduce(self, tensor: torch.Tensor, op: Any, callbacks: ThreadPoolExecutor) -> _SwitchWork:
        self._check_usable()
        target = tensor.detach()  # a leaf that requires grad is summed in place, as gloo does
        # Our own host buffer (never the caller's storage): int32 as it is, every float dtype as float32.
        staged = torch.empty(target.numel(), dtype=torch.int32 if target.dtype == torch.int32 else torch.float32)
        staged.copy_(target.reshape(-1))
        try:
            source = self._runner.submit(self._run, staged, target, op)
        except RuntimeError:  # the executor is shut down
            raise dist.DistBackendError(f"{self._label}: the process group was destroyed") from None
        return _SwitchWork(
            source, [tensor], self._deadline, self._label, callbacks, lambda error: _as_dist_error(error, self._label)
        )

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise dist.DistBackendError(
                f"{self._label}: the group is unusable since an earlier all_reduce failed: {self._broken}. Destroy "
                "it and create it again."
            )

    def _run(self, staged: torch.Tensor, target: torch.Tensor, op: Any) -> torch.Tensor:
        self._check_usable()  # one queued behind the failed one
        data = staged.numpy()
        try:
            if not self._connected:
                self._connect()
            if data.dtype == np.int32:
                self._peers.allreduce(data)
            else:
                self._peers.allreduce_float(data, self._lanes)
        except BmlError as exc:
            self._broken = str(exc)
            raise dist.DistBackendError(f"{self._label}: {exc}") from None
        target.copy_(staged.view(target.shape))
        if op == dist.ReduceOp.AVG and target.is_floating_point():
            target.div_(self._size)
        elif op == dist.ReduceOp.AVG:
            target.floor_divide_(self._size)
        return target

    def _connect(self) -> None:
        """Listen on every card, learn every rank's ports through the store, connect (bounded by join_timeout)."""
        own = str(self._rank)
        try:
            ports = self._peers.listen()
        except BmlError as exc:
            self._ports.set(own, json.dumps({"error": str(exc)}))  # the others fail with this, not at a timeout
            raise
        self._ports.set(own, json.dumps({"ports": ports}))
        keys = [str(r) for r in range(self._size)]
        try:
            self._ports.wait(keys, timedelta(seconds=self._connect_timeout))
        except (dist.DistError, RuntimeError):
            missing = [r for r in range(self._size) if not self._ports.check([str(r)])]
            raise BmlError(
                f"host {self._rank}: ranks {missing} did not listen on their cards within "
                f"{self._connect_timeout:g} s"
            ) from None
        published = [json.loads(self._ports.get(key)) for key in keys]
        failed = [f"rank {r} cannot listen on its cards: {p['error']}" for r, p in enumerate(published) if "error" in p]
        if failed:
            raise BmlError("; ".join(failed))
        self._peers.connect([p["ports"] for p in published])
        self._connected = True

    def close(self) -> None:
        """Wait for the synchronization in flight (bounded by its deadline), then close every connection."""
        self._runner.shutdown(wait=True, cancel_futures=True)
        self._peers.close()


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
        if self._options.idle_release is not None and self._options.idle_release < 0:
            raise ValueError(f"idle_release {self._options.idle_release} must be >= 0 seconds (0: never)")
        if self._options.lease is not None and self._options.lease <= 0:
            raise ValueError(f"lease {self._options.lease} must be > 0 seconds")
        block = 4 * int(self._options.lanes or DEFAULT_LANES)
        if int(self._options.device_piece or DEFAULT_PIECE_BYTES) < block:
            raise ValueError(
                f"device_piece {self._options.device_piece} (NETAGG_DEVICE_PIECE) must be at least one block of "
                f"{block} bytes"
            )
        # BML's plan is checked before anything waits on the other ranks.
        self._bml = _BmlPath(self._options, store, rank, size) if self._options.algorithm == "bml" else None
        # torch names the group after creating it (_set_group_name); until then it has none.
        self._group_name = ""
        self._group_desc = ""
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
        # The job on the switch: joined at the first switch all-reduce, given back when idle (see _idle_loop).
        # Generation g is the g-th time this group joined; every rank is in the same generation at the same
        # collective, because joining and giving back are decided at agreed points of the collective sequence.
        self._idle = dist.PrefixStore(_IDLE_PREFIX, store)
        self._state = threading.Condition()
        self._client: AllReduceClient | None = None
        self._generation = 0
        self._inflight = 0  # switch all-reduces submitted and not finished
        self._last_done = time.monotonic()
        self._last_switch = -1  # number of the last switch all-reduce
        self._results_before = 0  # RESULTs received by the clients of earlier generations
        self._closed = False
        self._idle_thread: threading.Thread | None = None
        # Switch all-reduces are numbered and handed to the agent under this lock; tensors on a device go through
        # the feeder (created at the first one), which hands their pieces over in call order.
        self._order = threading.Lock()
        self._feeder: DeviceFeeder | None = None
        _LIVE.add(self)

    @staticmethod
    def _agree_job_name(store: dist.Store, rank: int) -> str:
        key = "netagg/job"
        if rank == 0:
            store.set(key, f"torch-{uuid.uuid4().hex[:12]}")
        return store.get(key).decode()  # blocks until rank 0 has set it (bounded by the store's timeout)

    def getBackendName(self) -> str:
        return BACKEND_NAME

    # torch's ProcessGroup keeps its name in its registered C++ backends, which a Python group has none of: keep
    # them here, so that pg.group_name, functional collectives and destroy_process_group(group) work.
    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    def _set_group_desc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def group_name(self) -> str:
        return self._group_name

    @property
    def group_desc(self) -> str:
        return self._group_desc

    @property
    def job(self) -> str:
        """The job name of the current (or next) generation."""
        return self._job if self._generation == 0 else f"{self._job}.{self._generation}"

    @property
    def client(self) -> AllReduceClient | None:
        """The agent of the current generation, None while the group holds no job."""
        return self._client

    @property
    def results_received(self) -> int:
        """RESULTs this rank received from the switch over the group's lifetime (every generation)."""
        with self._state:
            current = self._client.stats.results if self._client is not None else 0
            return self._results_before + current

    @property
    def holds_job(self) -> bool:
        """Whether the group holds a job (and its slots) on the switch now."""
        return self._client is not None

    def next_seq(self) -> int:
        """Number the next collective of this group (every rank numbers its calls the same way)."""
        with self._seq_lock:
            return next(self._seq)

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist._Work:
        # opts.reduceOp is a ReduceOp wrapper; compare its RedOpType (`in` on the wrapper never matches).
        op = getattr(getattr(opts, "reduceOp", None), "op", dist.ReduceOp.SUM)
        if not self._through_switch(tensors, op):
            self.next_seq()
            return self._gloo.allreduce(tensors, opts if opts is not None else dist.AllreduceOptions())
        if self._bml is not None:
            self.next_seq()
            return self._bml.allreduce(tensors[0], op, self._callbacks)
        # gloo sums a leaf that requires grad in place; so do we, through a view autograd does not track.
        tensor = tensors[0].detach()
        name = "all_reduce" if op == dist.ReduceOp.SUM else "all_reduce(avg)"
        average = op == dist.ReduceOp.AVG
        # Numbered and handed to the agent under one lock: the agent's stream has the group's calls in call order.
        with self._order:
            seq = self.next_seq()
            descriptor = Collective(name, seq, tensor.numel(), dtype_name(tensor.dtype))
            if self._on_device(tensor):
                source = self._device_allreduce(seq, tensor, descriptor, average)
            else:
                source = self._host_allreduce(seq, tensor, descriptor, average)
        return _SwitchWork(
            source,
            tensors,
            self._options.deadline or DEFAULT_DEADLINE,
            self._label,
            self._callbacks,
            self._dist_error,
        )

    def _on_device(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is quantized on its own device and streamed in pieces (torch_device.py)."""
        mode = self._options.device_path
        if mode == "host" or self.size() < 2:  # pre-lanes need two workers or more
            return False
        return tensor.device.type != "cpu" or mode == "always"

    def _device_allreduce(self, seq: int, tensor: torch.Tensor, descriptor: Collective, average: bool) -> Future[Any]:
        client = self._joined(seq)
        try:
            source = self._device_feeder().submit(client, tensor, descriptor, average)
        except AgentClosedError as exc:  # destroyed meanwhile
            self._leave_op()
            raise dist.DistBackendError(str(exc)) from None
        except BaseException:
            self._leave_op()
            raise
        source.add_done_callback(lambda _: self._leave_op())
        return source

    def _host_allreduce(self, seq: int, tensor: torch.Tensor, descriptor: Collective, average: bool) -> Future[Any]:
        """Sum a tensor from host memory: a CPU tensor where it is, another device's through a pinned host copy."""
        host, write_back = _host_side(tensor)
        client = self._joined(seq)
        queued: Future[Any] | None = None
        if self._feeder is not None:  # device pieces still to be handed over go first
            queued = Future()
            queued.set_running_or_notify_cancel()

            def hand_over() -> None:  # on the feeder thread, or at its close: never raises
                assert queued is not None
                try:
                    _chain(self._submit(client, host, descriptor), queued)
                except BaseException as exc:  # noqa: BLE001 - delivered through the work
                    queued.set_exception(exc)

            if not self._feeder.in_order(hand_over):
                queued = None
        if queued is not None:
            source = queued
        else:
            try:
                source = self._submit(client, host, descriptor)
            except BaseException:
                self._leave_op()
                raise
        source.add_done_callback(lambda _: self._leave_op())
        if write_back is not None:
            source = _then(source, write_back)
        if average:
            source = _then(
                source,
                lambda t: t.div_(self.size()) if t.is_floating_point() else t.floor_divide_(self.size()),
            )
        return source

    def _joined(self, seq: int) -> AllReduceClient:
        try:
            return self._enter(seq)
        except AgentError as exc:  # the join failed (controller unreachable, no slots within join_timeout, ...)
            raise _as_dist_error(exc, self._label) from exc

    def _submit(self, client: AllReduceClient, host: torch.Tensor, descriptor: Collective) -> Future[Any]:
        """Hand a host tensor to the agent; raises as ``allreduce`` does."""
        try:
            return client.allreduce_async(host, descriptor=descriptor)
        except AgentInputError as exc:  # a ValueError for torch's caller: fix the call
            if exc.op_index is not None:  # the others run this all-reduce: tell them why it fails
                why = exc.__cause__ if isinstance(exc.__cause__, AgentInputError) else exc
                self._publish(local_record(self.rank(), exc.op_index, descriptor, str(why)))
            raise
        except AgentError as exc:  # broken by an earlier failure, or closed
            raise self._dist_error(exc) from exc

    def _device_feeder(self) -> DeviceFeeder:
        if self._feeder is None:
            self._feeder = DeviceFeeder(
                self.size(),
                int(self._options.lanes or DEFAULT_LANES),
                piece_bytes=int(self._options.device_piece or DEFAULT_PIECE_BYTES),
                buffers=DEFAULT_BUFFERS,
                label=self._label,
                on_give_up=lambda index, descriptor, error: self._publish(
                    local_record(self.rank(), index, descriptor, str(error))
                ),
            )
        return self._feeder

    # --- the job: joined on first use, given back when idle ------------------------------------------------

    def _enter(self, seq: int) -> AllReduceClient:
        """The client for switch all-reduce ``seq``, joining the job first if the group holds none."""
        with self._state:
            if self._closed:
                raise dist.DistBackendError(f"{self._label}: the process group was destroyed")
            if self._client is not None and self._inflight == 0 and self._idle_release_due(0.5):
                # Idle for half the period: a peer's idle thread may have decided to give the job back. The first
                # decision written for this point of the sequence wins, so every rank acts on the same one.
                if self._decide(_KEEP) == _RELEASE:
                    _close(self._release("every rank was idle"))
            if self._client is None:
                self._client = self._join()
            self._inflight += 1
            self._last_switch = seq
            return self._client

    def _leave_op(self) -> None:
        with self._state:
            self._inflight -= 1
            self._last_done = time.monotonic()
            self._state.notify_all()

    def _idle_release_due(self, fraction: float = 1.0) -> bool:
        period = self._options.idle_release or 0.0
        return period > 0 and time.monotonic() - self._last_done >= fraction * period

    def _decide(self, wish: bytes) -> bytes:
        """The decision for the current idle point: ``wish`` if this rank is the first to write one."""
        key = f"{self._generation}/{self._last_switch}"
        return bytes(self._idle.compare_set(key, "", wish.decode()))

    def _join(self) -> AllReduceClient:
        extra = dict(self._options.extra)
        if self._options.window is not None:
            extra["window"] = self._options.window
        client = AllReduceClient.join(
            _LeasedJobApi(_job_api(self._options.controller), self._options.lease),  # type: ignore[arg-type]
            self.job,
            self.size(),
            self.rank(),
            bind=self._options.bind,  # type: ignore[arg-type]
            lanes=self._options.lanes,  # type: ignore[arg-type]
            join_timeout=self._options.join_timeout,  # type: ignore[arg-type]
            deadline=self._options.deadline,
            **extra,
            **({"lease_seconds": self._options.lease} if _JOIN_TAKES_LEASE else {}),
        )
        self._label = f"netagg job {self.job!r} rank {self.rank()}"
        if self._options.idle_release and self._idle_thread is None:
            self._idle_thread = threading.Thread(
                target=self._idle_loop, name=f"netagg-idle-{self._job}", daemon=True
            )
            self._idle_thread.start()
        return client

    def _release(self, why: str) -> AllReduceClient | None:
        """Detach the current generation's client (caller holds ``_state``); the next switch all-reduce joins anew.

        Returns the client for the caller to close: with no all-reduce in flight under the lock, or else after
        releasing it (closing fails queued all-reduces, whose callbacks take the lock).
        """
        client, self._client = self._client, None
        if client is None:
            return None
        self._results_before += client.stats.results
        self._generation += 1
        log.info("%s: giving the job's slots back (%s)", self._label, why)
        return client

    def _idle_loop(self) -> None:
        """Give the job back once this rank was idle for ``idle_release`` s, if no peer went on meanwhile."""
        period = float(self._options.idle_release or 0.0)
        checked: tuple[int, int] | None = None
        with self._state:
            while not self._closed:
                point = (self._generation, self._last_switch)
                if self._client is None or self._inflight or point == checked:
                    self._state.wait()
                    continue
                left = self._last_done + period - time.monotonic()
                if left > 0:
                    self._state.wait(left)
                    continue
                checked = point
                try:
                    decision = self._decide(_RELEASE)
                except (dist.DistError, RuntimeError) as exc:  # the store is gone: the lease settles it
                    log.warning("%s: idle release check failed: %s", self._label, exc)
                    continue
                if decision == _RELEASE:
                    _close(self._release(f"no switch all-reduce for {period:g} s"))

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
            and tensors[0].layout == torch.strided  # sparse tensors: gloo sums them
            and tensors[0].device.type != "meta"  # no data: gloo raises as it would without netagg
            and tensors[0].dtype in SWITCH_DTYPES
        )

    def shutdown(self) -> None:
        """Leave the job (torch calls this on destroy_process_group; netagg at interpreter exit). Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            client = self._release("the group was destroyed")
            self._state.notify_all()
        _close(client)
        if self._feeder is not None:
            self._feeder.close()
        if self._bml is not None:
            self._bml.close()
        self._callbacks.shutdown(wait=False)
        _LIVE.discard(self)

    def __del__(self) -> None:
        if getattr(self, "_client", None) is None:
            return
        try:
            self.shutdown()
        except Exception as exc:  # noqa: BLE001 - garbage collection: nobody left to raise to
            log.debug("closing %s at garbage collection failed: %s", self._label, exc)


#: Groups not shut down yet: left at interpreter exit, while the modules closing them still exist.
_LIVE: weakref.WeakSet[NetaggProcessGroup] = weakref.WeakSet()


@atexit.register
def _leave_all() -> None:
    for group in list(_LIVE):
        try:
            group.shutdown()
        except Exception as exc:  # noqa: BLE001 - exiting: log and leave the others
            log.warning("leaving %s at exit failed: %s", group._label, exc)

#: Whether AllReduceClient.join asks for a lease itself (else _LeasedJobApi adds it to the controller's join).
_JOIN_TAKES_LEASE = "lease_seconds" in inspect.signature(AllReduceClient.join).parameters


def _host_side(tensor: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The tensor the agent sums in place, and how the sum gets back to ``tensor`` (None: it is that tensor).

    A CPU tensor is summed where it is. Any other device's tensor is copied into a host buffer (pinned for CUDA, so
    both copies are DMA transfers) and the sum copied back to the device when the all-reduce completes.
    """
    if tensor.device.type == "cpu":
        return tensor, None
    pinned = tensor.device.type == "cuda" and torch.cuda.is_available()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pinned)
    host.copy_(tensor)  # device -> host: waits for the device's queued work on the tensor

    def write_back(summed: torch.Tensor) -> torch.Tensor:
        tensor.copy_(summed)  # host -> device (on the completion thread: the caller's tensor is ours until then)
        return tensor

    return host, write_back


def _close(client: AllReduceClient | None) -> None:
    if client is not None:
        client.close()


def _job_api(controller: str | JobApi) -> JobApi:
    return ControllerClient(controller) if isinstance(controller, str) else controller


class _LeasedJobApi:
    """A job API whose joins ask for ``lease`` seconds, and wait for free slots while the pool is exhausted.

    Waiting is consistent across ranks: the first rank whose join finds slots reserves them for the job, and the
    others' joins then join that reservation instead of asking the pool again.
    """

    def __init__(self, api: JobApi, lease: float | None) -> None:
        self._api = api
        # A job API object without lease_seconds (one written for an older controller) gets the controller's lease.
        params = inspect.signature(api.join).parameters
        takes_lease = "lease_seconds" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        self._lease = lease if takes_lease else None

    def join(self, job: str, **kwargs: Any) -> Any:
        if kwargs.get("lease_seconds") is None and self._lease:
            kwargs["lease_seconds"] = self._lease
        deadline = time.monotonic() + float(kwargs.get("timeout", 60.0))
        pause = threading.Event()  # never set: a bounded wait between polls of the pool
        backoff = POOL_RETRY_FIRST
        while True:
            try:
                return self._api.join(job, **kwargs)
            except Exception as exc:
                if getattr(exc, "type", None) != "PoolExhausted" or time.monotonic() + backoff > deadline:
                    raise
                log.info("job %r: %s; asking again in %.2f s", job, exc, backoff)
            pause.wait(backoff)
            backoff = min(2 * backoff, POOL_RETRY_LONGEST)

    def leave(self, job: str, rank: int) -> Any:
        return self._api.leave(job, rank)

    def heartbeat(self, job: str, rank: int) -> Any:
        return self._api.heartbeat(job, rank)


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


def _chain(source: Future[Any], out: Future[Any]) -> None:
    """Resolve ``out`` as ``source`` resolves."""

    def done(f: Future[Any]) -> None:
        error = f.exception()
        if error is not None:
            out.set_exception(error)
        else:
            out.set_result(f.result())

    source.add_done_callback(done)


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
        dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=list(DEVICES))


register()
