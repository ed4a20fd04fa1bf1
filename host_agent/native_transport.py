"""The transport with its data path compiled: the same protocol as transport.py, run in C over whole bursts.

``Transport`` (transport.py) is the executable reference: per-slot state in numpy arrays, one Python pass per
burst. ``NativeTransport`` hands the whole data path to ``_native.Engine`` (host_agent/native/engine.c): receive,
check, land the sums, retransmit, pick the rounds the congestion window lets out, quantize them straight into
their packets and send, in a loop that runs without the GIL and returns to Python only when an all-reduce
completes, something was submitted, or an error needs its message. Python keeps everything that is not per packet:
the queue of submissions, completing futures, the error reports, and the counters it copies out after each step.

``make_transport`` picks one by ``TransportConfig.datapath`` (default ``$NETAGG_DATAPATH``, else native);
tests/host_agent/test_native_transport.py runs both on the same streams and compares every sum and counter.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

from netagg.constants import chosen_datapath
from netagg.host_agent import _native
from netagg.host_agent import quantize as q
from netagg.host_agent.burst import RECV_MODES, SEND_MODES
from netagg.host_agent.errors import AllReduceTimeout
from netagg.host_agent.operation import Operation
from netagg.host_agent.session import JoinResult
from netagg.host_agent.timers import LOSS_QUEUE_SHARE, MIN_RTT_PERIOD
from netagg.host_agent.transport import (
    _TSI_MASK,
    _UNDEFINED_FLAGS,
    FAST_RETRANSMIT_MARGIN,
    Phase,
    Transport,
    TransportConfig,
    exponent_above_shared,
    unannounced_exponent,
)
from netagg.wire import HEADER_BYTES

#: Longest stretch the engine runs before Python looks at its flags (stop, abort) again, in seconds.
_STEP_S = 1.0

# Event codes of na_engine_step (host_agent/native/engine.h).
_EV_NONE, _EV_DIVERGED, _EV_UNANNOUNCED, _EV_EXPONENT, _EV_TIMEOUT, _EV_OSERROR = range(6)


class NativeTransport(Transport):
    """``Transport`` with the per-packet work in ``_native.Engine``; same interface, same counters."""

    def __init__(
        self,
        session: JoinResult,
        sock: socket.socket,
        config: TransportConfig,
        on_complete: Callable[[Operation], None],
        on_fail: Callable[[list[Operation], BaseException], None],
    ) -> None:
        super().__init__(session, sock, config, on_complete, on_fail)
        cw = config.congestion
        io = self._io
        self._engine = _native.Engine(
            fd=sock.fileno(),
            wake_fd=self._wake_r.fileno(),
            window=self._w,
            lanes=self._lanes,
            seg=self._msg_len,
            budget=self._budget,
            scale_base=q.scale_base(self._n),
            b0_result=self._result_b0,
            job=self._job_id,
            undefined_flags=_UNDEFINED_FLAGS,
            key=self._key,
            header=bytes(self._pkts[0, :HEADER_BYTES]),
            send_mode=SEND_MODES.index(io.send_mode),
            recv_mode=RECV_MODES.index(io.recv_mode),
            gro_probe=io.gro_probing,
            rto=(config.rto.initial, config.rto.minimum, config.rto.maximum, FAST_RETRANSMIT_MARGIN),
            congestion=None
            if cw is None
            else (cw.initial, cw.minimum, cw.decrease, cw.delay_target, LOSS_QUEUE_SHARE, MIN_RTT_PERIOD),
            loss=config.loss,
            loss_seed=config.loss_seed,
            deadline=config.deadline,
        )
        # What the socket held before it was connected was counted by Transport.__init__; the engine counts on.
        self._before = (self.stats.malformed, self.stats.duplicate_results)

    def _wake(self) -> None:
        self._engine.notify()  # a step busy sending returns at its next pass
        super()._wake()

    def _loop(self) -> None:
        engine, active, on_complete = self._engine, self._active, self._on_complete
        while not self._stop:
            if self._abort is not None:
                raise self._abort
            self._drain_wake()
            self._drain_submissions()
            completed, event, a, b, c, d = engine.step(_STEP_S)
            self._copy_stats()
            for index in completed:
                op = active.pop(index)
                op.remaining = 0
                on_complete(op)
            if event != _EV_NONE:
                raise self._event_error(event, a, b, c, d)

    def _enqueue(self, op: Operation) -> None:
        op.first_chunk = self._next_chunk
        self._next_chunk += op.num_blocks
        if op.num_blocks == 0:
            self._on_complete(op)
            return
        self._active[op.index] = op
        self._recent.add(op.op_id, op.index, op.descriptor)
        st = op.staged
        self._engine.add(op.index, op.op_id, st.exact, st.prescaled, op.abort, st.head, st.tail, st.exps,
                         st.nonfinite, op.used_exps, op.result_nonfinite if st.prescaled else None)  # fmt: skip

    def _copy_stats(self) -> None:
        s = self.stats
        (s.updates_sent, s.bytes_sent, s.warmups_sent, s.retransmissions, s.dropped_on_purpose, s.send_buffer_full,
         s.results, duplicates, malformed, s.forged, s.send_calls, s.recv_calls, s.window_decreases, s.window,
         send_mode, recv_mode) = self._engine.stats()  # fmt: skip
        s.malformed = self._before[0] + malformed
        s.duplicate_results = self._before[1] + duplicates
        s.send_mode, s.recv_mode = SEND_MODES[send_mode], RECV_MODES[recv_mode]

    # --- errors: the engine stops at the first; Python words it as the reference does ---------------------

    def _event_error(self, event: int, a: int, b: int, c: int, d: int) -> BaseException:
        if event == _EV_DIVERGED:
            self._check_diverged(self._active[d], b, c)  # raises (the engine let the harmless case through)
            return RuntimeError(f"slot {a}: a RESULT with flags {b:#x} and op {c:#010x} stopped the stream")
        if event == _EV_UNANNOUNCED:
            return unannounced_exponent(a, b)
        if event == _EV_EXPONENT:
            return exponent_above_shared(a, b, c)
        if event == _EV_TIMEOUT:
            return self._timeout(self._active[a], time.monotonic())
        if event == _EV_OSERROR:
            if b:
                return OSError(a, f"send to the switch failed: {os.strerror(a)}")
            return OSError(a, f"receive on the aggregation socket failed: {errno.errorcode.get(a, a)}")
        return RuntimeError(f"the transport engine stopped with unknown event {event}")

    def _timeout(self, op: Operation, now: float) -> AllReduceTimeout:
        state = self._engine.op_state(op.index)
        if state is None:  # pragma: no cover - an operation the engine never had cannot time out
            raise RuntimeError(f"operation {op.index} is not queued in the transport engine")
        started, progress, remaining, rows_sent, first = state
        w, last = self._w, first + op.num_blocks
        missing = []
        for s, (phase, rnd, out_index, chunk) in enumerate(self._engine.slots()):
            if (phase == Phase.DATA_OUT and out_index == op.index) or (
                phase == Phase.WARMUP_OUT and first <= chunk < last
            ):
                missing.append((s, (rnd * w + s) & _TSI_MASK))
        return AllReduceTimeout(
            job=self.session.job,
            job_id=self.session.job_id,
            rank=self.session.rank,
            op_index=op.index,
            waited=now - progress,
            elapsed=now - (started if started is not None else now),
            done_chunks=op.num_blocks - remaining,
            total_chunks=op.num_blocks,
            deadline=self.config.deadline,
            missing=missing,
            unsent_chunks=op.num_blocks - rows_sent,
            retransmissions=self.stats.retransmissions,
        )


def make_transport(
    session: JoinResult,
    sock: socket.socket,
    config: TransportConfig,
    on_complete: Callable[[Operation], None],
    on_fail: Callable[[list[Operation], BaseException], None],
) -> Transport:
    """The transport ``config.datapath`` names (default ``$NETAGG_DATAPATH``, else native)."""
    cls = NativeTransport if chosen_datapath(config.datapath) == "native" else Transport
    return cls(session, sock, config, on_complete, on_fail)
