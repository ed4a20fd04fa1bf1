"""``AllReduceClient``: the framework-neutral all-reduce API of a worker joined to a job.

Threads: the caller's (staging a tensor and queueing it), one transport thread (the protocol), one completion
thread (dequantizing, writing results back, resolving futures) and, when joined through a controller, one
heartbeat thread. A framework shim (e.g. a torch ProcessGroup) calls ``allreduce_async`` and chains on the
returned ``concurrent.futures.Future``.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self

import numpy as np

from netagg.host_agent.collective import DEFAULT_NAME, ENCODING_ABORT, Collective, dtype_name, label
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentClosedError,
    AgentError,
    AgentInputError,
    AllReduceTimeout,
    JobLostError,
    JoinError,
    StreamDivergedError,
    SwitchRestartedError,
)
from netagg.host_agent.heartbeat import Heartbeat, interval_for_lease
from netagg.host_agent.native_transport import make_transport
from netagg.host_agent.netinfo import mac_for_address
from netagg.host_agent.operation import Operation
from netagg.host_agent.session import JobApi, JoinResult
from netagg.host_agent.staging import Prescaled, Staged, exact_staged, stage
from netagg.host_agent.timers import RtoConfig, WindowConfig
from netagg.host_agent.transport import TransportConfig, TransportStats

log = logging.getLogger(__name__)

#: Lanes per packet asked for at join (the largest the wire carries: fewest packets per byte). See docs.
DEFAULT_LANES = 256
#: Slots in flight per worker, asked for at join (see docs/host_agent.md, "Tuning").
DEFAULT_WINDOW = 64
#: Seconds an all-reduce may go without progress (no RESULT for it) before it fails.
DEFAULT_DEADLINE = 30.0
DEFAULT_HEARTBEAT_INTERVAL = 1.0
_DEFAULT_WINDOW_CONFIG = WindowConfig()


class AllReduceClient:
    """Sums tensors across the job's workers through the switch; use as a context manager or call ``close``."""

    def __init__(
        self,
        session: JoinResult,
        sock: socket.socket,
        *,
        window: int | None = None,
        deadline: float = DEFAULT_DEADLINE,
        rto: RtoConfig | None = None,
        loss: float = 0.0,
        loss_seed: int | None = None,
        controller: JobApi | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        congestion: WindowConfig | None = _DEFAULT_WINDOW_CONFIG,
        send_mode: str = "auto",
        recv_mode: str = "auto",
        datapath: str = "",
    ) -> None:
        """Run the protocol for an existing admission on ``sock`` (bound to the address the switch sends to).

        ``congestion``: the congestion window's settings (``WindowConfig``), or None for a fixed window of W rounds
        in flight. ``send_mode``/``recv_mode``: "auto" (UDP GSO/GRO where the kernel has them), or force
        "sendmmsg"/"recvmmsg" (see docs/host_agent.md, "Bursts"). ``datapath``: "native" (the compiled engine),
        "python" (the reference) or "" (``$NETAGG_DATAPATH``, else native).
        """
        if deadline <= 0:
            raise AgentInputError(f"deadline must be positive, got {deadline}")
        # Every worker must use the same W (chunk d rides slot d % W). The grant is the same for all ranks of a
        # job, so the default, all granted slots, agrees by construction.
        window = session.slots if window is None else window
        if not 1 <= window <= session.slots:
            raise AgentInputError(
                f"window {window} must be within 1..{session.slots} (slots granted to job {session.job!r})"
            )
        if not 0.0 <= loss < 1.0:
            raise AgentInputError(f"loss {loss} must be a fraction within [0, 1)")
        self.session = session
        self._controller = controller
        self._sock = sock
        self._indices = itertools.count()
        self._submit_lock = threading.Lock()  # operation indices and queue order must agree
        self._closed = False
        self._broken: BaseException | None = None
        self._completion_prefix = f"netagg-complete-{session.job}-r{session.rank}"
        self._completions = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._completion_prefix)
        config = TransportConfig(
            window=window,
            deadline=deadline,
            rto=rto or RtoConfig(),
            loss=loss,
            loss_seed=(loss_seed if loss_seed is not None else 0) * 1000 + session.rank,
            congestion=congestion,
            send_mode=send_mode,
            recv_mode=recv_mode,
            datapath=datapath,
        )
        self._transport = make_transport(session, sock, config, self._on_complete, self._on_fail)
        self._heartbeat = (
            Heartbeat(controller, session.job, session.rank, heartbeat_interval, on_lost=self._job_lost,
                      switch_generation=session.switch_generation, on_switch_restart=self._switch_restarted)
            if controller is not None
            else None
        )
        self._transport.start()
        if self._heartbeat is not None:
            self._heartbeat.start()

    @classmethod
    def join(
        cls,
        controller: JobApi,
        job: str,
        world_size: int,
        rank: int,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        mac: str | None = None,
        lanes: int = DEFAULT_LANES,
        slots: int | None = None,
        join_timeout: float = 60.0,
        lease_seconds: float | None = None,
        **options: Any,
    ) -> AllReduceClient:
        """Bind a UDP socket, join ``job`` through the controller (waits for all ranks) and start the client.

        ``window`` (an option) is the number of slots asked for; the window used is what the controller grants, so
        all ranks agree on it. Other ``options`` go to the constructor (deadline, rto, loss, loss_seed,
        heartbeat_interval). ``lease_seconds`` asks the controller for a lease (None: its default): a process
        that dies without leaving frees the job after it; heartbeats go at a quarter of the lease granted.
        """
        if bind in ("", "0.0.0.0"):
            raise AgentInputError(
                "bind must be the local IPv4 address the switch sends RESULTs to, not a wildcard "
                f"(got {bind!r}); e.g. 127.0.0.1 for the software switch's UDP mode"
            )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((bind, port))
            addr, bound_port = sock.getsockname()
            if slots is None:  # ask for the window; W is then whatever the controller grants to every rank
                slots = options.pop("window", None) or DEFAULT_WINDOW
            try:
                answer = controller.join(
                    job,
                    world_size=world_size,
                    rank=rank,
                    addr=addr,
                    port=bound_port,
                    mac=mac or mac_for_address(addr),
                    lanes=lanes,
                    slots=slots,
                    timeout=join_timeout,
                    lease_seconds=lease_seconds,
                )
            except JoinError:
                raise
            except Exception as exc:
                raise JoinError(f"joining job {job!r} as rank {rank} of {world_size} failed: {exc}") from exc
            try:
                if not isinstance(answer, JoinResult):
                    raise JoinError(f"joining job {job!r} as rank {rank}: the job API answered {answer!r}")
                session = answer
                if session.lease_seconds and "heartbeat_interval" not in options:
                    options["heartbeat_interval"] = interval_for_lease(session.lease_seconds,
                                                                       DEFAULT_HEARTBEAT_INTERVAL)
                return cls(session, sock, controller=controller, **options)
            except BaseException:
                _leave_quietly(controller, job, rank)  # joined but cannot run: free the job's place at once
                raise
        except BaseException:
            sock.close()
            raise

    # --- all-reduce ----------------------------------------------------------------------------------------

    def allreduce_async(
        self, x: Any, *, inplace: bool = True, descriptor: Collective | None = None
    ) -> Future[Any]:
        """Queue the sum of ``x`` over all workers; the future's value is ``x`` (in place) or a new tensor.

        Every worker must issue the same all-reduces (same sizes and dtypes) in the same order; one that does not
        makes the all-reduce fail on every rank (CollectiveMismatchError). ``descriptor`` names the collective for
        that check (a framework's own sequence number, e.g. over all of a group's collectives); by default the
        client's count of all-reduces. ``x`` must not be touched until the future is done.

        Bad input raises AgentInputError here. The all-reduce still takes its place in the stream: this rank sends
        an ABORT there, so the other ranks fail it too (CollectiveAbortedError) instead of waiting for it or
        adding the next all-reduce's data to it.
        """
        self._check_open()
        error: AgentInputError | None = None
        try:
            staged, target = stage(x, lanes=self.session.lanes, inplace=inplace)
            if descriptor is not None:
                self._check_descriptor(descriptor, staged, part=isinstance(x, Prescaled) and x.part)
        except AgentInputError as exc:
            error = exc
        with self._submit_lock:
            self._check_open()
            index = next(self._indices)
            if error is None:
                op = Operation(index, staged, target, self.session.world_size,
                               self._descriptor(index, descriptor, staged))  # fmt: skip
            else:
                op = self._abort_operation(index, descriptor, x, error)
            op.future.set_running_or_notify_cancel()  # the stream cannot skip an operation: no cancelling
            self._transport.submit(op)
        if error is not None:
            others = (
                ": the other ranks fail it too, and the job cannot continue unless every rank gave up on it"
                if self.session.world_size > 1
                else ""
            )
            raise AgentInputError(
                f"{error} (rank {self.session.rank} of job {self.session.job!r} gave up on "
                f"{label(index, op.descriptor)}{others})",
                op_index=index,
            ) from error
        return op.future

    def give_up(self, descriptor: Collective, error: BaseException) -> int:
        """Put an ABORT at this point of the stream for a collective this rank cannot send the rest of (e.g. its
        device failed after some pieces went out): the other ranks fail it within a round trip instead of waiting
        for chunks that never come. Returns the index of the abort operation (for the rank's failure report)."""
        with self._submit_lock:
            self._check_open()
            index = next(self._indices)
            op = self._abort_operation(index, descriptor, None, AgentInputError(str(error)))
            op.future.set_running_or_notify_cancel()
            self._transport.submit(op)
        return index

    @staticmethod
    def _descriptor(index: int, given: Collective | None, staged: Staged) -> Collective:
        """The collective's descriptor: the caller's, or the client's count; the agent adds the encoding."""
        if given is None:
            return Collective(DEFAULT_NAME, index, staged.count, staged.dtype, staged.encoding)
        return Collective(given.name, given.seq, given.count, given.dtype, staged.encoding)

    @staticmethod
    def _check_descriptor(given: Collective, staged: Staged, *, part: bool = False) -> None:
        if (given.count != staged.count and not part) or given.dtype != staged.dtype:
            raise AgentInputError(
                f"the descriptor of {given.name} #{given.seq} says {given.count} {given.dtype} elements, the tensor "
                f"has {staged.count} {staged.dtype} elements"
            )

    def _abort_operation(
        self, index: int, given: Collective | None, x: Any, error: AgentInputError
    ) -> Operation:
        """One all-zero chunk flagged ABORT at the place of an all-reduce this rank gave up on."""
        if given is not None:
            descriptor = Collective(given.name, given.seq, given.count, given.dtype, ENCODING_ABORT)
        else:
            count, dtype = _what_it_was(x)
            descriptor = Collective(DEFAULT_NAME, index, count, dtype, ENCODING_ABORT)
        lanes = self.session.lanes
        staged = exact_staged(np.zeros((1, lanes), np.int32), 0, "")
        return Operation(index, staged, None, self.session.world_size, descriptor, abort_error=error)

    def allreduce(self, x: Any, *, inplace: bool = True, descriptor: Collective | None = None) -> Any:
        """Blocking ``allreduce_async``; raises the operation's error (e.g. AllReduceTimeout)."""
        if self._on_completion_thread():
            raise AgentError(
                "blocking allreduce() inside a completion callback would wait for itself; use allreduce_async()"
            )
        future = self.allreduce_async(x, inplace=inplace, descriptor=descriptor)
        # The transport resolves every future by its deadline; the bound here only guards against a bug.
        return future.result(timeout=self._transport.config.deadline * 4 + 60)

    @property
    def stats(self) -> TransportStats:
        return self._transport.stats

    @property
    def window(self) -> int:
        return self._transport.config.window

    def _on_completion_thread(self) -> bool:
        return threading.current_thread().name.startswith(self._completion_prefix + "_")

    def _check_open(self) -> None:
        if isinstance(self._broken, AgentBrokenError):  # already says why the stream cannot continue
            raise self._broken
        if self._broken is not None:
            raise AgentBrokenError(self._broken)
        if self._closed:
            raise AgentClosedError(
                f"the client of job {self.session.job!r} rank {self.session.rank} is closed"
            )

    # --- callbacks from the transport thread ---------------------------------------------------------------

    def _on_complete(self, op: Operation) -> None:
        self._hand_over(self._finish, op)

    @staticmethod
    def _finish(op: Operation) -> None:
        try:
            result = op.finish()
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller through the future
            op.future.set_exception(exc)
        else:
            op.future.set_result(result)

    def _job_lost(self, cause: BaseException) -> None:
        self._transport.abort(
            JobLostError(
                f"the controller no longer knows job {self.session.job!r} rank {self.session.rank} ({cause}); "
                "its lease may have expired: join again on every worker"
            )
        )

    def _switch_restarted(self, joined: int, now: int) -> None:
        self._transport.abort(
            SwitchRestartedError(job=self.session.job, rank=self.session.rank, joined=joined, now=now)
        )

    def _hand_over(self, fn: Any, arg: Any) -> None:
        """Run ``fn(arg)`` on the completion thread; inline if that has already stopped (never lose a future)."""
        try:
            self._completions.submit(fn, arg)
        except RuntimeError:  # executor shut down
            fn(arg)

    def _on_fail(self, ops: list[Operation], error: BaseException) -> None:
        if not isinstance(error, AgentClosedError) or isinstance(error, AgentBrokenError):
            self._broken = error
        for op in ops:
            if isinstance(error, AgentClosedError) or (
                isinstance(error, (AllReduceTimeout, StreamDivergedError)) and error.op_index == op.index
            ):
                exc: BaseException = error
            else:
                exc = AgentBrokenError(error)
            self._hand_over(op.future.set_exception, exc)

    # --- lifetime ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the transport (queued operations fail), leave the job and release the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._transport.close()
            # A future's callback may close the client on the completion thread, which cannot wait for itself.
            self._completions.shutdown(wait=not self._on_completion_thread())
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
            self._sock.close()
            if self._controller is not None:
                try:
                    self._controller.leave(self.session.job, self.session.rank)
                except Exception as exc:  # noqa: BLE001 - the controller also expires silent workers
                    log.warning(
                        "leaving job %r as rank %d failed: %s", self.session.job, self.session.rank, exc
                    )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _what_it_was(x: Any) -> tuple[int | None, str | None]:
    """Element count and dtype of an input that could not be staged, where it has them (for error messages)."""
    try:
        count = int(x.numel()) if callable(getattr(x, "numel", None)) else int(x.size)
        return count, dtype_name(x.dtype)
    except (AttributeError, TypeError, ValueError):
        return None, None


def _leave_quietly(controller: JobApi, job: str, rank: int) -> None:
    try:
        controller.leave(job, rank)
    except Exception as exc:  # noqa: BLE001 - the controller also expires workers whose heartbeats stop
        log.warning("leaving job %r as rank %d failed: %s", job, rank, exc)
