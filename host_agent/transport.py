"""The transport thread: one UDP socket, one window of W slots, every queued all-reduce pipelined through it.

Stream model (docs/host_agent.md has the full state machine). Every all-reduce of the job is cut into chunks of
``lanes`` values; chunks get consecutive global indices across all-reduces in submission order, and chunk ``d``
rides slot ``d % W``. Each slot runs a sequence of *rounds*; round ``j`` on slot ``s`` has
``tsi = j * W + s`` and uses copy ``set = j % 2``. A round is a *data* round (one chunk) or a *warm-up* round
(zero payload, carrying only an exponent). A round's UPDATE announces the exponent of the slot's next chunk; its
RESULT's ``exp`` (the max over workers) is the shared exponent that next chunk is quantized with.

When a worker does not know its next chunk yet (the next all-reduce is not queued), it announces ``EXP_UNKNOWN``
(the largest int8). The max makes every worker see it, so all of them agree, without any extra message, that
the slot's next round is a warm-up. A real exponent equal to ``EXP_UNKNOWN`` costs one extra warm-up round and
nothing else. A warm-up round is always followed by a data round.

Every UPDATE carries the worker's key and the ``op`` id of the collective its chunk belongs to (collective.py);
a RESULT must carry the worker's key back. A RESULT flagged MISMATCH (the ranks' collectives at this point of the
stream differ) or ABORT (a rank gave up on the collective) fails the collective and stops the transport: the
ranks no longer agree on the stream, and continuing could only add chunks of different collectives together.

Data path: every slot's packet is one row of a (W, message) byte array; a burst of slots is quantized straight into
their rows' big-endian lanes, their headers are written as vectors (``burst.HEADER_DTYPE``) and consecutive rows go
out with one system call (``burst.BurstSocket``). Received bursts are checked as vectors, and the sums are
dequantized straight from the receive buffer into the operation's rows. Per-slot state lives in arrays; Python
runs once per slot only for the queue bookkeeping. A congestion window (timers.CongestionWindow) bounds the
rounds in flight, oldest round first, so every worker always sends the round the job waits for.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from netagg.constants import FLAGS_DEFINED, Flag, MsgType
from netagg.host_agent import _native
from netagg.host_agent import quantize as q
from netagg.host_agent.burst import SOFT_SEND_ERRORS, BurstSocket, headers
from netagg.host_agent.collective import RecentOps
from netagg.host_agent.errors import (
    AgentBrokenError,
    AgentClosedError,
    AllReduceTimeout,
    CollectiveAbortedError,
    CollectiveMismatchError,
    JobLostError,
    StreamDivergedError,
)
from netagg.host_agent.operation import Operation
from netagg.host_agent.session import JoinResult
from netagg.host_agent.timers import CongestionWindow, DeadlineHeap, RtoConfig, RttEstimator, WindowConfig
from netagg.wire import (
    EXP_MAX,
    HEADER_BYTES,
    SLOT_MAX,
    header_byte0,
    header_struct,
    message_bytes,
    pack_header,
)

log = logging.getLogger(__name__)

#: Announced for a slot's next chunk when it is not queued yet; its RESULT then means "warm-up round next".
EXP_UNKNOWN = EXP_MAX

_TSI_MASK = 0xFFFFFFFF
_NONFINITE = int(Flag.NONFINITE)
_ABORT = int(Flag.ABORT)
_MISMATCH = int(Flag.MISMATCH)
_DIVERGED = _ABORT | _MISMATCH
#: Unfinished all-reduces listed in a divergence error (what a framework shim compares across ranks).
_ACTIVE_SHOWN = 16
_UNDEFINED_FLAGS = ~FLAGS_DEFINED & 0xFF
_HEADER = header_struct()
_NO_SLOTS = np.zeros(0, np.int64)
#: A round in flight is presumed lost once a round first sent this many smoothed RTTs after it has completed.
FAST_RETRANSMIT_MARGIN = 0.25


def _index(a: np.ndarray) -> slice | np.ndarray:
    """``a`` (int64 slot numbers or positions) as a slice when it is one consecutive ascending range."""
    n = len(a)
    if n and int(a[-1]) - int(a[0]) == n - 1 and (n < 3 or (a[1:] > a[:-1]).all()):
        return slice(int(a[0]), int(a[0]) + n)
    return a


def _runs(x: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges over which both ``x`` and ``y`` step by one (one call per range)."""
    n = len(x)
    if int(x[-1]) - int(x[0]) == n - 1 == int(y[-1]) - int(y[0]) and (
        n < 3 or ((x[1:] > x[:-1]).all() and (y is x or (y[1:] > y[:-1]).all()))
    ):
        return [(0, n)]  # the usual burst: consecutive slots answering consecutive rows
    breaks = (np.flatnonzero((np.diff(x) != 1) | (np.diff(y) != 1)) + 1).tolist()
    return list(zip([0, *breaks], [*breaks, n]))


def unannounced_exponent(s: int, tsi: int) -> RuntimeError:
    """The error for a RESULT that gives slot ``s`` a shared exponent although it announced none."""
    return RuntimeError(
        f"protocol error on slot {s}: the RESULT of round tsi {tsi} carries a shared exponent for a next chunk "
        "this worker announced as unknown (do all workers use the same window and issue the same all-reduces?)"
    )


def exponent_above_shared(chunk: int, own: int, shared: int) -> RuntimeError:
    """The error for a chunk whose own exponent the shared one does not cover (the workers' streams differ)."""
    return RuntimeError(
        f"protocol error: chunk {chunk} has exponent {own} above the shared exponent {shared} (do all workers "
        "issue the same all-reduces?)"
    )


class Phase(enum.IntEnum):
    """Where a slot is in its round sequence."""

    NEED_WARMUP = 0  # no shared exponent for the next chunk: its first round must be a warm-up
    READY = 1  # holds the shared exponent of the next chunk, which is queued
    WARMUP_OUT = 2  # a warm-up round is in flight
    DATA_OUT = 3  # a data round is in flight


# Plain ints for the per-packet paths (comparing enum members costs attribute lookups there).
_NEED_WARMUP, _READY, _WARMUP_OUT, _DATA_OUT = (int(p) for p in Phase)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Tuning of one client's transport."""

    window: int  # W: slots used (at most the granted slots)
    deadline: float = (
        30.0  # seconds an all-reduce may go without progress (from its first UPDATE or last RESULT)
    )
    rto: RtoConfig = field(default_factory=RtoConfig)
    loss: float = 0.0  # fraction of outgoing packets dropped on purpose (tests, demos)
    loss_seed: int = 0
    socket_buffer: int = 4 << 20
    #: Congestion window (rounds in flight, at most W); None: no congestion control, W rounds in flight.
    congestion: WindowConfig | None = field(default_factory=WindowConfig)
    send_mode: str = "auto"  # "gso", "sendmmsg" or "auto" (GSO where the kernel takes it)
    recv_mode: str = "auto"  # "gro", "recvmmsg" or "auto" (GRO where the kernel takes it)
    #: "native" (the compiled engine), "python" (this module, the reference) or "" ($NETAGG_DATAPATH, else native).
    datapath: str = ""


@dataclass(slots=True)
class TransportStats:
    """Counters of one transport (read them from any thread; they only grow)."""

    updates_sent: int = 0
    bytes_sent: int = 0
    warmups_sent: int = 0
    retransmissions: int = 0
    dropped_on_purpose: int = 0
    send_buffer_full: int = 0
    results: int = 0
    duplicate_results: int = 0  # valid RESULTs for a round already finished (or not ours)
    malformed: int = 0  # datagrams that are not a RESULT of this job with our size
    forged: int = 0  # RESULTs of this job whose key is not ours (the switch puts each worker's own key in)
    # Datagrams from an address other than the switch's that were queued before the socket was connected to
    # the switch; afterwards the kernel drops them (and answers ICMP port unreachable) before they reach us.
    foreign: int = 0
    send_mode: str = ""  # how bursts go out: "gso" (one sendmsg per up to 64 datagrams) or "sendmmsg"
    recv_mode: str = ""  # how bursts come in: "gro" (coalesced runs) or "recvmmsg"
    send_calls: int = 0  # system calls that sent datagrams
    recv_calls: int = 0  # system calls that received (or found the socket empty)
    window_decreases: int = 0  # congestion events (a loss, or a queue building up) that shrank the window
    window: float = 0.0  # the congestion window (rounds in flight) now


class Transport:
    """Owns the socket and runs the protocol on its own thread; ``submit`` may be called from any thread."""

    def __init__(
        self,
        session: JoinResult,
        sock: socket.socket,
        config: TransportConfig,
        on_complete: Callable[[Operation], None],
        on_fail: Callable[[list[Operation], BaseException], None],
    ) -> None:
        if not 1 <= config.window <= session.slots:
            raise ValueError(f"window {config.window} must be within 1..{session.slots} (the granted slots)")
        if not 0.0 <= config.loss < 1.0:
            raise ValueError(f"loss {config.loss} must be within [0, 1)")
        self.session = session
        self.config = config
        self.stats = TransportStats()
        self._sock = sock
        self._dst = (session.switch.addr, session.switch.port)
        self._on_complete = on_complete
        self._on_fail = on_fail
        self._size = session.size_code
        self._lanes = session.lanes
        self._msg_len = message_bytes(session.lanes)
        self._n = session.world_size

        w = config.window
        self._w = w
        slots = np.arange(w, dtype=np.int64)
        self._slots = slots
        self._phase = np.full(w, _NEED_WARMUP, np.int8)
        self._round = np.zeros(w, np.int64)  # round number j of the slot's current (or next) round
        # Header fields of each slot's current round, kept in step with _round (a completed round bumps them).
        self._tsi = slots.astype(np.uint32)  # (j * W + s) mod 2**32
        self._pool = slots.astype(np.uint16)  # pool_index(s, j % 2)
        self._update_b0 = header_byte0(MsgType.UPDATE, self._size)
        self._result_b0 = header_byte0(MsgType.RESULT, self._size)
        self._job_id = session.job_id
        self._key = session.key
        self._shared_exp = np.zeros(w, np.int16)
        # The operations with chunks still to send on each slot, oldest first; the head's next row on the slot.
        self._queue: list[deque[Operation]] = [deque() for _ in range(w)]
        self._queued = np.zeros(w, np.int64)  # len(self._queue[s]), as an array
        self._head_row = np.zeros(w, np.int64)
        self._head_opidx = np.full(w, -1, np.int64)  # self._queue[s][0].index
        # The data round in flight on each slot: its operation (index, -1 for none) and row; and the op id the
        # slot's round in flight carries (data or warm-up), which its RESULT must echo.
        self._out_opidx = np.full(w, -1, np.int64)
        self._out_row = np.zeros(w, np.int64)
        self._out_opid = np.zeros(w, np.uint32)
        self._sent_at = np.zeros(w)  # first transmission of the slot's round in flight
        self._last_tx = np.zeros(w)  # latest (re)transmission
        self._last_result = 0.0  # when the latest accepted RESULT arrived, on any slot
        self._retx_share = 0.0  # moving share of rounds that needed a retransmission (over ~W rounds)
        self._attempts = np.zeros(w, np.int64)
        self._slot_rto = np.zeros(w)
        self._generation = np.zeros(w, np.int64)
        self._inflight = 0  # slots with a round out (WARMUP_OUT or DATA_OUT)
        # Every slot's packet: row s. Constant fields are validated once, then copied to every row.
        self._pkts = np.zeros((w, self._msg_len), np.uint8)
        pack_header(self._pkts[0], 0, msg_type=MsgType.UPDATE, size=self._size, job=self._job_id, tsi=0, slot=0,
                    set=0, exp=0, key=self._key)  # fmt: skip
        self._pkts[1:, :HEADER_BYTES] = self._pkts[0, :HEADER_BYTES]
        self._hdr = headers(self._pkts, w, self._msg_len)
        self._hdr["tsi"] = self._tsi
        self._hdr["pool"] = self._pool
        self._pkt_lanes = q.lane_view(self._pkts, w, session.lanes, offset=HEADER_BYTES, stride=self._msg_len)
        self._pending: set[int] = set()  # slots that may be able to send
        # Header fields of the burst being sent, by slot.
        self._tx_exp = np.zeros(w, np.int8)
        self._tx_flags = np.zeros(w, np.uint8)
        self._tx_op = np.zeros(w, np.uint32)
        self._timers = DeadlineHeap()
        self._rtt = RttEstimator(config.rto, config.congestion.delay_target if config.congestion else 0.0)
        self._cwnd = CongestionWindow(w, config.congestion) if config.congestion is not None else None
        self.stats.window = float(self._cwnd.limit if self._cwnd else w)
        self._loss_rng = np.random.default_rng(config.loss_seed)

        self._rbuf = bytearray(self._msg_len + 64)  # larger than a message, so oversized datagrams are seen
        self._payload_bytes = self._msg_len - HEADER_BYTES
        self._budget = 4 * w + 64  # datagrams taken off the socket per loop pass

        self._next_chunk = 0  # global index of the next submitted chunk
        self._active: dict[int, Operation] = {}  # submitted, not completed, by operation index
        self._recent = RecentOps()  # op id -> descriptor of recent operations, to name a MISMATCH's other side
        self._submissions: queue.SimpleQueue[Operation] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed_error against submit()
        self._closed_error: BaseException | None = None
        self._stop = False
        self._abort: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"netagg-transport-{session.job}-r{session.rank}", daemon=True
        )

        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, config.socket_buffer)
            except OSError:  # pragma: no cover - a smaller buffer only means more retransmissions
                log.warning("could not set socket buffer option %s to %d", opt, config.socket_buffer)
        # Connected: sends need no address, and the kernel delivers only the switch's datagrams, so a received
        # burst needs no source check.
        sock.connect(self._dst)
        self._drain_unconnected()
        self._io = BurstSocket(sock, self._msg_len, self._budget, send_mode=config.send_mode,
                               recv_mode=config.recv_mode)  # fmt: skip
        self.stats.send_mode, self.stats.recv_mode = self._io.send_mode, self._io.recv_mode
        self._rhdr = headers(self._io.rbuf, self._budget, self._msg_len)
        self._expect = (self._result_b0, self._job_id, _UNDEFINED_FLAGS, self._key)
        self._seen = np.zeros(w, np.uint8)  # scratch of the RESULT check
        self._acc_pos = np.zeros(self._budget, np.int64)  # burst positions and slots of the accepted RESULTs
        self._acc_slot = np.zeros(self._budget, np.int64)
        self._rlanes = q.lane_view(self._io.rbuf, self._budget, session.lanes, offset=HEADER_BYTES,
                                   stride=self._msg_len)  # fmt: skip
        self._loss = config.loss

    # --- any thread ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Operation) -> None:
        """Queue an operation; raises AgentClosedError if the transport has stopped."""
        with self._lock:
            if self._closed_error is not None:
                raise self._closed_error
            self._submissions.put(op)
        self._wake()

    def abort(self, error: BaseException) -> None:
        """Fail everything queued with ``error`` (as a timeout would) and stop."""
        self._abort = error
        self._wake()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; operations still queued fail with AgentClosedError."""
        self._stop = True
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - the loop wakes at least every second
                raise RuntimeError(
                    f"transport thread of job {self.session.job!r} did not stop within {timeout} s"
                )
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or closed

    # --- transport thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._loop()
        except (AllReduceTimeout, JobLostError, StreamDivergedError) as exc:
            log.error("%s", exc)
            error = exc
        except BaseException as exc:
            log.exception("transport of job %r rank %d failed", self.session.job, self.session.rank)
            error = exc
        self._shutdown(error)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r.fileno(), select.POLLIN)
        deadline_check = 0.0
        while not self._stop:
            if self._abort is not None:
                raise self._abort
            self._receive()
            # After receiving, right before packing: an all-reduce submitted before a RESULT arrived is queued by
            # the time that RESULT's slot announces its next chunk (what makes the chain's behaviour predictable).
            self._drain_submissions()
            now = time.monotonic()
            self._retransmit_expired(now)
            self._send_pending(now)
            if self._cwnd is not None:
                self.stats.window = self._cwnd.cwnd
                self.stats.window_decreases = self._cwnd.decreases
            if self._active and now >= deadline_check:
                self._check_deadlines(now)
                deadline_check = now + min(0.01, self.config.deadline / 10)
            wait = 1.0
            nxt = self._timers.next_deadline()
            if nxt is not None:
                wait = min(wait, nxt - now)
            if self._active:
                wait = min(wait, deadline_check - now)
            if wait > 0:
                for fd, _ in poller.poll(wait * 1000.0):
                    if fd == self._wake_r.fileno():
                        self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _drain_submissions(self) -> None:
        submissions = self._submissions
        while not submissions.empty():  # one consumer: a non-empty queue stays non-empty until we get()
            self._enqueue(submissions.get_nowait())

    def _enqueue(self, op: Operation) -> None:
        """Give the operation its global chunk range and append its rows to the slots' queues."""
        m, w = op.num_blocks, self._w
        op.first_chunk = self._next_chunk
        self._next_chunk += m
        if m == 0:
            self._on_complete(op)
            return
        self._active[op.index] = op
        self._recent.add(op.op_id, op.index, op.descriptor)
        for row in range(min(w, m)):
            slot = (op.first_chunk + row) % w
            if not self._queue[slot]:
                self._head_row[slot] = row
                self._head_opidx[slot] = op.index
            self._queue[slot].append(op)
            self._queued[slot] += 1
            self._pending.add(slot)

    # --- receive -------------------------------------------------------------------------------------------

    def _drain_unconnected(self) -> None:
        """Discard what reached the socket before it was connected to the switch, counting it.

        Nothing is in flight yet, so no datagram queued before can complete a round: the switch's count as
        malformed or duplicate RESULTs (as they would later), anyone else's as foreign.
        """
        stats = self.stats
        while True:
            try:
                n, src = self._sock.recvfrom_into(self._rbuf)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue
            if src != self._dst:
                stats.foreign += 1
            elif self._well_formed(n):
                stats.duplicate_results += 1
            else:
                stats.malformed += 1

    def _well_formed(self, n: int) -> bool:
        """Whether the ``n`` bytes in the receive buffer are a RESULT of this job, size and window."""
        if n != self._msg_len:
            return False
        b0, job, _, pool, _, flags, key, _ = _HEADER.unpack_from(self._rbuf)
        return (
            b0 == self._result_b0
            and job == self._job_id
            and not flags & _UNDEFINED_FLAGS
            and key == self._key
            and (pool & SLOT_MAX) < self._w
        )

    def _receive(self) -> None:
        """Take a burst of datagrams off the socket and complete the rounds they answer."""
        stats = self.stats
        good, wrong = self._io.recv(self._budget)
        stats.recv_calls = self._io.recv_calls
        stats.recv_mode = self._io.recv_mode
        stats.malformed += wrong
        if not good:
            return
        # Every check of a RESULT, on the whole burst at once (compiled: one pass over the headers).
        accepted, malformed, forged, duplicates = _native.match_results(
            self._io.rbuf, good, self._msg_len, self._expect, self._phase, _WARMUP_OUT, self._tsi, self._pool,
            self._seen, self._acc_pos, self._acc_slot,
        )  # fmt: skip
        stats.malformed += malformed
        stats.forged += forged
        stats.duplicate_results += duplicates
        pos, s = self._acc_pos[:accepted], self._acc_slot[:accepted]
        if len(s):
            self._complete(pos, s)

    def _complete(self, pos: np.ndarray, s_arr: np.ndarray) -> None:
        """Finish the rounds of slots ``s_arr``, answered by the RESULTs at burst positions ``pos``."""
        h = self._rhdr
        now = time.monotonic()  # the datagrams were all queued by then
        self._last_result = now
        w = self._w
        si = _index(s_arr)  # a slice when the slots are consecutive (the usual burst): cheaper than an array
        phases_before = self._phase[si].copy()  # a view of a slice would change with the slots' phases
        clean = self._attempts[si] == 0
        n_clean = int(clean.sum())
        if n_clean:  # one RTT sample per burst is plenty
            first = int(s_arr[int(np.argmax(clean))])
            rtt = now - float(self._sent_at[first])
            self._rtt.sample(rtt)
            if self._cwnd is not None:
                self._cwnd.on_rtt(rtt, float(self._sent_at[first]), now)
            keys = (self._round[si] * w + s_arr)[clean]  # the clean rounds' places in the stream
            last = int(np.argmax(keys))
            last_key, last_key_sent = int(keys[last]), float(self._sent_at[si][clean][last])
        if self._cwnd is not None:
            self._cwnd.on_results(n_clean)
        share = self._retx_share  # moving share of rounds that needed a retransmission
        share += (len(s_arr) - n_clean) * (1.0 - share) / w - n_clean * share / w
        self._retx_share = min(max(share, 0.0), 1.0)
        pi = _index(pos)
        exps = h["exp"][pi]
        flags = h["flags"][pi]
        op_ids = h["op"][pi]
        plain = not ((flags & _DIVERGED).any() or (op_ids != self._out_opid[si]).any())
        if plain and (phases_before == _DATA_OUT).all():
            done = self._complete_data(pos, s_arr, si, exps, now)
        else:
            done = self._complete_each(pos, s_arr, phases_before, exps.tolist(), flags.tolist(), op_ids.tolist(), now)
        # Every slot moves to its next round (a bumped generation makes its retransmission deadline stale).
        self._inflight -= len(s_arr)
        self._generation[si] += 1
        rounds = self._round[si] + 1
        self._round[si] = rounds
        self._tsi[si] = (rounds * w + s_arr) & _TSI_MASK
        self._pool[si] = s_arr | ((rounds & 1) << 15)
        self._pending.update(s_arr.tolist())
        for op in done:
            del self._active[op.index]
            self._on_complete(op)
        self.stats.results += len(s_arr)
        if n_clean:
            self._fast_retransmit(last_key, last_key_sent, now)

    def _fast_retransmit(self, key: int, key_sent: float, now: float) -> None:
        """Resend at once the rounds in flight that come before the round ``key`` that just completed, both in
        stream order and in sending time (by ``FAST_RETRANSMIT_MARGIN`` of the smoothed RTT, for reordering).

        Every rank sends its rounds oldest first, so when round ``key`` completed, every rank had sent the earlier
        ones: this rank's that were sent before it and are still unanswered most likely lost their UPDATE or
        RESULT. Waiting for their timeout (at least ``RtoConfig.minimum``) would stall the slot, and under steady
        random loss the congestion window would fill with stalled rounds. Only rounds not retransmitted yet
        qualify (once per round, as TCP's fast retransmit). A wrong guess costs one duplicate UPDATE, which the
        switch answers or ignores.
        """
        w = self._w
        limit = key_sent - FAST_RETRANSMIT_MARGIN * self._rtt.srtt
        earlier = self._round * w + np.arange(w) < key
        lost = np.flatnonzero(
            (self._phase >= _WARMUP_OUT) & (self._attempts == 0) & (self._sent_at < limit) & earlier
        )
        if not len(lost):
            return
        self._attempts[lost] += 1
        self._generation[lost] += 1  # their pending timeouts are stale: re-armed from now
        self._timers.push(now + self._rtt.rto, lost, self._generation[lost])
        if self._cwnd is not None:
            self._cwnd.on_loss(float(self._sent_at[lost].max()), now)
        self.stats.retransmissions += len(lost)
        self._last_tx[lost] = now
        self._transmit(lost)

    def _complete_data(self, pos: np.ndarray, s_arr: np.ndarray, si: slice | np.ndarray, exps: np.ndarray,
                       now: float) -> list[Operation]:  # fmt: skip
        """The common case, on arrays: every RESULT answers a data round, none flagged or of another op."""
        unknown = exps == EXP_UNKNOWN
        unannounced = ~unknown & (self._queued[si] == 0)
        if unannounced.any():
            s = int(s_arr[int(np.argmax(unannounced))])
            raise unannounced_exponent(s, (int(self._round[s]) * self._w + s) & _TSI_MASK)
        self._phase[si] = np.where(unknown, _NEED_WARMUP, _READY)
        self._shared_exp[si] = exps
        opidx = self._out_opidx[si].copy()
        self._out_opidx[si] = -1
        if (opidx == opidx[0]).all():  # one operation: the usual case
            groups = [(int(opidx[0]), self._out_row[si], pos)]
        else:
            groups = [(i, self._out_row[s_arr[opidx == i]], pos[opidx == i]) for i in np.unique(opidx).tolist()]
        done = []
        for index, rows, positions in groups:
            op = self._active[index]
            self._land(op, rows, positions)
            op.progress_at = now
            op.remaining -= len(rows)
            if op.remaining == 0:
                done.append(op)
        return done

    def _complete_each(self, pos: np.ndarray, s_arr: np.ndarray, phases_before: np.ndarray, exps: list[int],
                       flags: list[int], op_ids: list[int], now: float) -> list[Operation]:  # fmt: skip
        """Any mix of data and warm-up rounds, flags and ops, slot by slot (divergence raises here)."""
        phases, queues, out_row, shared_exp, out_opidx = (
            self._phase, self._queue, self._out_row, self._shared_exp, self._out_opidx
        )
        landed: dict[int, tuple[Operation, list[int], list[int]]] = {}  # op index -> (op, rows, positions)
        done: list[Operation] = []
        for k, (s, phase) in enumerate(zip(s_arr.tolist(), phases_before.tolist())):
            exp, fl, op_id = exps[k], flags[k], op_ids[k]
            # The collective whose chunk (data round) or announced chunk (warm-up) this round carried.
            ours = self._active[int(out_opidx[s])] if phase == _DATA_OUT else queues[s][0]
            if fl & _DIVERGED or op_id != ours.op_id:
                self._check_diverged(ours, fl, op_id)  # raises unless every rank gave up on it alike
            if phase == _DATA_OUT:
                op = ours
                out_opidx[s] = -1
                entry = landed.get(op.index)
                if entry is None:
                    entry = landed[op.index] = (op, [], [])
                entry[1].append(int(out_row[s]))
                entry[2].append(int(pos[k]))
                op.progress_at = now
                op.remaining -= 1
                if op.remaining == 0:
                    done.append(op)
                if exp == EXP_UNKNOWN:
                    phases[s] = _NEED_WARMUP
                elif not queues[s]:
                    raise unannounced_exponent(s, (int(self._round[s]) * self._w + s) & _TSI_MASK)
                else:
                    phases[s] = _READY
                    shared_exp[s] = exp
            else:  # warm-up: the exponent is for the chunk it announced; a data round always follows
                phases[s] = _READY
                shared_exp[s] = exp
        for op, rows, positions in landed.values():
            self._land(op, np.asarray(rows), np.asarray(positions))
        return done

    def _land(self, op: Operation, r: np.ndarray, p: np.ndarray) -> None:
        """Write the RESULTs at burst positions ``p`` into ``op``'s rows ``r``: one call per run of consecutive
        rows at consecutive positions (a burst answers rows in order, so there is usually one)."""
        flags = self._rhdr["flags"]
        for a, b in _runs(r, p):
            p0, p1 = int(p[a]), int(p[b - 1]) + 1
            op.land(int(r[a]), self._rlanes[p0:p1], (flags[p0:p1] & _NONFINITE) != 0)

    def _check_diverged(self, ours: Operation, flags: int, op_id: int) -> None:
        """Raise the error for a RESULT whose round mixed collectives or was given up on, or return if harmless.

        Harmless: ABORT without MISMATCH on this rank's own abort operation. Every contribution then carried the
        same op, this rank's abort op, so every rank gave up on this collective at the same point (each raised
        its own error) and the streams still agree.
        """
        if flags & _ABORT and not flags & _MISMATCH and ours.abort and op_id == ours.op_id:
            return
        # If this rank gave up on an earlier collective that is still unfinished, that is where the streams
        # parted (its ABORT RESULT may simply not be here yet, e.g. lost): report it, not the later collective.
        ours = next((op for op in self._active.values() if op.abort and op.index < ours.index), ours)
        session = self.session
        active = [(op.index, op.descriptor) for op in islice(self._active.values(), _ACTIVE_SHOWN)]
        common = {
            "job": session.job,
            "job_id": session.job_id,
            "rank": session.rank,
            "op_index": ours.index,
            "descriptor": ours.descriptor,
            "active": active,
        }
        if ours.abort:
            raise CollectiveAbortedError(local_error=str(ours.abort_error), **common)
        if flags & _ABORT:
            raise CollectiveAbortedError(**common)
        if op_id == ours.op_id:
            theirs = f"this rank's op {op_id:#010x} too, so another rank's contribution differed"
        else:
            theirs = self._recent.describe(op_id)
        raise CollectiveMismatchError(theirs=theirs, **common)

    # --- send ----------------------------------------------------------------------------------------------

    def _announce(self, s: int) -> int:
        """Exponent of the slot's next queued chunk, or EXP_UNKNOWN if none is queued yet."""
        qd = self._queue[s]
        if not qd:
            return EXP_UNKNOWN
        return qd[0].block_exps[int(self._head_row[s])]

    def _sendable(self) -> np.ndarray:
        """The pending slots that can send now, oldest round first, as many as the congestion window allows.

        Slots left out stay pending. Whatever the window, the oldest unfinished round of this worker may always
        go: every worker sends that round, so the job never waits on rounds nobody is allowed to send.
        """
        phases, w = self._phase, self._w
        slots = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        self._pending.clear()
        phase = phases[slots]
        slots = slots[(phase == _READY) | ((phase == _NEED_WARMUP) & (self._queued[slots] > 0))]
        if not len(slots):
            return _NO_SLOTS
        seq = self._round[slots] * w + slots  # the rounds' order in the stream (tsi before the wrap)
        slots = slots[np.argsort(seq, kind="stable")]
        if self._cwnd is None:
            return slots
        allowed = self._cwnd.limit - self._inflight
        if allowed <= 0:
            out = self._phase >= _WARMUP_OUT
            oldest_out = (self._round[out] * w + self._slots[out]).min() if self._inflight else None
            allowed = 1 if oldest_out is None or int(seq.min()) < int(oldest_out) else 0
        self._pending.update(slots[allowed:].tolist())
        return slots[:allowed]

    def _send_pending(self, now: float) -> None:
        if not self._pending:
            return
        chosen = self._sendable()
        if not len(chosen):
            return
        queues = self._queue
        ready = self._phase[chosen] == _READY
        # Header fields of this burst, per slot; tsi and pool_index are kept per slot already.
        exps, flags, op_ids = self._tx_exp, self._tx_flags, self._tx_op
        if not ready.all():
            warm = chosen[~ready]
            self._pkt_lanes[warm] = 0
            for s in warm.tolist():
                op = queues[s][0]
                # The warm-up belongs to the collective of the chunk it announces: it carries that op (and its
                # ABORT).
                exps[s] = self._announce(s)
                flags[s] = _ABORT if op.abort else 0
                op_ids[s] = self._out_opid[s] = op.op_id
                if op.started_at is None:
                    op.started_at = op.progress_at = now
            self._phase[warm] = _WARMUP_OUT
            self.stats.warmups_sent += len(warm)
        data = chosen[ready]
        if len(data):
            heads = self._head_opidx[data]
            if (heads == heads[0]).all():
                self._quantize_into_packets(self._active[int(heads[0])], data, now)
            else:
                for index in np.unique(heads).tolist():
                    self._quantize_into_packets(self._active[index], data[heads == index], now)
        sent = chosen
        _native.write_headers(self._pkts, self._msg_len, sent, self._tsi, self._pool, exps, flags, op_ids)
        self._attempts[sent] = 0
        self._sent_at[sent] = now
        self._last_tx[sent] = now
        rto = self._rtt.rto
        self._slot_rto[sent] = rto
        self._inflight += len(sent)
        # Every first transmission of this pass shares the send time and the timeout: one timer entry for all.
        self._timers.push(now + rto, sent, self._generation[sent])
        self._transmit(np.sort(sent))

    def _quantize_into_packets(self, op: Operation, s_arr: np.ndarray, now: float) -> None:
        """Quantize the head chunks of slots ``s_arr`` (all of one operation, oldest first) straight into the
        slots' packets and announce each slot's next chunk; one kernel call per run of consecutive slots and rows."""
        w = self._w
        rows = self._head_row[s_arr]
        shared = self._shared_exp[s_arr]
        staged = op.staged
        if not staged.exact:
            own = staged.exps[rows]
            if np.any(own > shared):
                bad = int(np.argmax(own > shared))
                raise exponent_above_shared(op.first_chunk + int(rows[bad]), int(own[bad]), int(shared[bad]))
        if op.started_at is None:
            op.started_at = op.progress_at = now
        op.used_exps[rows] = shared
        op.rows_sent += len(s_arr)
        lanes = self._pkt_lanes
        for a, b in _runs(s_arr, rows):
            s0, r0, r1 = int(s_arr[a]), int(rows[a]), int(rows[b - 1]) + 1
            for p0, p1, blocks in staged.parts(r0, r1):
                out = lanes[s0 + p0 - r0 : s0 + p1 - r0]
                if staged.exact:
                    out[...] = blocks
                elif staged.prescaled:
                    q.requantize(blocks, staged.exps[p0:p1], shared[a + p0 - r0 : a + p1 - r0], out=out)
                else:
                    q.quantize(blocks, shared[a + p0 - r0 : a + p1 - r0], self._n, out=out,
                               own=(staged.exps[p0:p1], staged.nonfinite[p0:p1]))  # fmt: skip
        base_flags = _ABORT if op.abort else 0
        self._tx_flags[s_arr] = np.where(staged.nonfinite[rows], base_flags | _NONFINITE, base_flags)
        self._tx_op[s_arr] = op.op_id
        self._out_opid[s_arr] = op.op_id
        self._out_opidx[s_arr] = op.index
        self._out_row[s_arr] = rows
        self._phase[s_arr] = _DATA_OUT
        # Each slot's next chunk: the operation's chunk W further on, else the head of the next operation queued
        # on the slot (its exponent is announced), else none yet (EXP_UNKNOWN).
        nxt = rows + w
        self._head_row[s_arr] = nxt
        more = nxt < op.blocks
        exps = self._tx_exp
        exps[s_arr[more]] = staged.exps[nxt[more]]
        if not more.all():
            queues, head_row, head_opidx = self._queue, self._head_row, self._head_opidx
            for s in s_arr[~more].tolist():  # the operation has no more chunks on these slots
                qd = queues[s]
                qd.popleft()
                self._queued[s] -= 1
                if qd:
                    following = qd[0]
                    row = (s - following.first_chunk) % w
                    head_row[s] = row
                    head_opidx[s] = following.index
                    exps[s] = following.block_exps[row]
                else:
                    head_opidx[s] = -1
                    exps[s] = EXP_UNKNOWN

    def _retransmit_expired(self, now: float) -> None:
        slots, gens = self._timers.pop_expired(now)
        gen = self._generation
        if len(slots):
            live = (gens == gen[slots]) & (self._phase[slots] >= _WARMUP_OUT)
            slots = np.unique(slots[live])
        if len(slots):
            self._attempts[slots] += 1
            # A slot whose job moved on since it last sent lost a packet of this round (the network and the
            # peers are alive): retry at the normal timeout. If nothing arrived at all, a peer is slow or gone or
            # the switch is down: back off.
            alive = self._last_result > self._last_tx[slots]
            rto = np.where(alive, self._rtt.rto, np.minimum(self._slot_rto[slots] * 2, self.config.rto.maximum))
            self._slot_rto[slots] = rto
            for value in np.unique(rto).tolist():
                same = slots[rto == value]
                self._timers.push(now + value, same, gen[same])
            if self._cwnd is not None and alive.any():
                self._cwnd.on_loss(float(self._sent_at[slots[alive]].max()), now)
            self.stats.retransmissions += len(slots)
            self._last_tx[slots] = now
            self._transmit(slots)  # the same bytes as the first transmission
            if self._retx_share > 0.8:
                # Most rounds need a retransmission: far more than loss explains, so the timeout is too short
                # (Karn's rule starves the estimator exactly then). Double it once per scan, as TCP does.
                self._rtt.backoff()
        self._timers.discard_stale(gen)

    def _transmit(self, slots: np.ndarray) -> None:
        """Send the packets of ``slots`` (ascending): one burst per run of consecutive slots."""
        stats = self.stats
        if self._loss:
            keep = self._loss_rng.random(len(slots)) >= self._loss
            stats.dropped_on_purpose += len(slots) - int(keep.sum())
            slots = slots[keep]
            if not len(slots):
                return
        pkts, io = self._pkts, self._io
        for a, b in _runs(slots, slots):
            s0, count = int(slots[a]), b - a
            sent, err = io.send(pkts[s0 : s0 + count], count)
            stats.updates_sent += sent
            stats.bytes_sent += sent * self._msg_len
            if err:
                if err not in SOFT_SEND_ERRORS:
                    raise OSError(err, f"send to the switch failed: {os.strerror(err)}")
                # Refused for now (buffer full, an ICMP error): as good as lost, the retransmission timer covers it.
                stats.send_buffer_full += count - sent
        stats.send_calls = io.send_calls
        stats.send_mode = io.send_mode

    # --- deadlines and shutdown ----------------------------------------------------------------------------

    def _check_deadlines(self, now: float) -> None:
        limit = self.config.deadline
        for op in self._active.values():
            if op.started_at is not None and now - op.progress_at > limit:
                raise self._timeout(op, now)

    def _timeout(self, op: Operation, now: float) -> AllReduceTimeout:
        missing = []
        for s in range(self._w):
            phase = self._phase[s]
            if phase < Phase.WARMUP_OUT:
                continue
            if (phase == Phase.DATA_OUT and self._out_opidx[s] == op.index) or (
                phase == Phase.WARMUP_OUT and self._queue[s][0] is op
            ):
                missing.append((s, (int(self._round[s]) * self._w + s) & _TSI_MASK))
        assert op.started_at is not None
        return AllReduceTimeout(
            job=self.session.job,
            job_id=self.session.job_id,
            rank=self.session.rank,
            op_index=op.index,
            waited=now - op.progress_at,
            elapsed=now - op.started_at,
            done_chunks=op.num_blocks - op.remaining,
            total_chunks=op.num_blocks,
            deadline=self.config.deadline,
            missing=missing,
            unsent_chunks=op.num_blocks - op.rows_sent,
            retransmissions=self.stats.retransmissions,
        )

    def _shutdown(self, error: BaseException | None) -> None:
        """Fail everything still queued: with ``error`` if the stream broke, AgentClosedError if closed."""
        if error is None:
            closed: BaseException = AgentClosedError(
                f"the client of job {self.session.job!r} rank {self.session.rank} was closed"
            )
        else:
            closed = AgentBrokenError(error)
        with self._lock:
            self._closed_error = closed
        pending = list(self._active.values())
        while True:
            try:
                pending.append(self._submissions.get_nowait())
            except queue.Empty:
                break
        self._active.clear()
        self._on_fail(pending, error if error is not None else closed)
