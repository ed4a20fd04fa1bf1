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
"""

from __future__ import annotations

import enum
import errno
import logging
import queue
import random
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
from netagg.host_agent import quantize as q
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
from netagg.host_agent.timers import DeadlineHeap, RtoConfig, RttEstimator
from netagg.wire import (
    EXP_MAX,
    HEADER_BYTES,
    LANE_DTYPE,
    SLOT_MAX,
    header_byte0,
    header_struct,
    message_bytes,
    pack_header,
    pool_index,
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
        self._msg_len = message_bytes(session.lanes)
        self._n = session.world_size

        w = config.window
        self._w = w
        self._phase = [_NEED_WARMUP] * w
        self._round = [0] * w  # round number j of the slot's current (or next) round
        # Header fields of each slot's current round, kept in step with _round (a completed round bumps them).
        self._pools = [(pool_index(s, 0), pool_index(s, 1)) for s in range(w)]
        self._tsi = list(range(w))  # (j * W + s) mod 2**32
        self._pool = [pools[0] for pools in self._pools]  # pool_index(s, j % 2)
        self._update_b0 = header_byte0(MsgType.UPDATE, self._size)
        self._result_b0 = header_byte0(MsgType.RESULT, self._size)
        self._job_id = session.job_id
        self._key = session.key
        self._shared_exp = [0] * w
        self._queue: list[deque[list]] = [deque() for _ in range(w)]  # entries [op, row]: chunks for the slot
        self._out_op: list[Operation | None] = [None] * w
        self._out_row = [0] * w
        self._sent_at = [0.0] * w  # first transmission of the slot's round in flight
        self._last_tx = [0.0] * w  # latest (re)transmission
        self._last_result = 0.0  # when the latest accepted RESULT arrived, on any slot
        self._retx_share = 0.0  # moving share of rounds that needed a retransmission (over ~W rounds)
        self._attempts = [0] * w
        self._slot_rto = [0.0] * w
        self._generation = [0] * w
        self._pkt = [bytearray(self._msg_len) for _ in range(w)]
        self._pkt_lanes = [np.frombuffer(p, dtype=LANE_DTYPE, offset=HEADER_BYTES) for p in self._pkt]
        self._pkt_payload = [memoryview(p)[HEADER_BYTES:] for p in self._pkt]
        for s, pkt in enumerate(self._pkt):
            # Validates the fields that never change (size, job, slot) once; per packet only the Struct packs.
            pack_header(pkt, 0, msg_type=MsgType.UPDATE, size=self._size, job=self._job_id, tsi=s, slot=s, set=0,
                        exp=0, key=self._key)  # fmt: skip
        self._pending: set[int] = set()  # slots that may be able to send
        self._timers = DeadlineHeap()
        self._armed: list[tuple[int, int]] = []  # (slot, generation) first sent in this pass: one timer entry
        self._rtt = RttEstimator(config.rto)
        self._rng = random.Random(config.loss_seed)

        self._rbuf = bytearray(self._msg_len + 64)  # larger than a message, so oversized datagrams are seen
        self._rpayload = memoryview(self._rbuf)[HEADER_BYTES : self._msg_len]
        self._payload_bytes = self._msg_len - HEADER_BYTES

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
        # Connected: send() skips the per-call address parsing and route lookup of sendto(), and the kernel
        # delivers only the switch's datagrams, so recv_into() needs no source check.
        sock.connect(self._dst)
        self._drain_unconnected()
        self._send = sock.send
        self._recv_into = sock.recv_into
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
            self._receive(budget=4 * self._w + 64)
            # After receiving, right before packing: an all-reduce submitted before a RESULT arrived is queued by
            # the time that RESULT's slot announces its next chunk (what makes the chain's behaviour predictable).
            self._drain_submissions()
            now = time.monotonic()
            self._retransmit_expired(now)
            self._send_pending(now)
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
        for s in range(min(w, m)):
            slot = (op.first_chunk + s) % w
            self._queue[slot].append([op, s])
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

    def _receive(self, budget: int) -> None:
        """Take up to ``budget`` datagrams off the socket and complete the rounds they answer."""
        # The checks of _well_formed and the bookkeeping of a finished round, inlined: this runs once per packet.
        recv_into, rbuf, msg_len, stats = self._recv_into, self._rbuf, self._msg_len, self.stats
        unpack = _HEADER.unpack_from
        result_b0, job_id, key_ours, w = self._result_b0, self._job_id, self._key, self._w
        phases, tsis, pools, attempts = self._phase, self._tsi, self._pool, self._attempts
        rounds, slot_pools, generation, pending = self._round, self._pools, self._generation, self._pending
        out_op, out_row, shared_exp, queues = self._out_op, self._out_row, self._shared_exp, self._queue
        payload, nb = self._rpayload, self._payload_bytes
        now = 0.0
        rtt_sampled = False  # one RTT sample per pass is plenty, and spares a float update per packet
        share = self._retx_share
        accepted = 0
        try:
            for _ in range(budget):
                try:
                    n = recv_into(rbuf)
                except BlockingIOError:
                    return
                except ConnectionRefusedError:
                    continue  # ICMP port unreachable after an earlier send: the switch is not up (yet)
                if n != msg_len:
                    stats.malformed += 1
                    continue
                b0, job, tsi, pool, exp, flags, key, op_id = unpack(rbuf)
                # b0 holds version, msg_type, the reserved bit and the size code: one comparison checks them all.
                if b0 != result_b0 or job != job_id or flags & _UNDEFINED_FLAGS:
                    stats.malformed += 1
                    continue
                if key != key_ours:
                    stats.forged += 1
                    continue
                s = pool & SLOT_MAX
                if s >= w:
                    stats.malformed += 1
                    continue
                phase = phases[s]
                if phase < _WARMUP_OUT or tsi != tsis[s] or pool != pools[s]:  # pool also holds the set bit
                    stats.duplicate_results += 1
                    continue
                # The collective whose chunk (data round) or announced chunk (warm-up) this round carried.
                ours = out_op[s] if phase == _DATA_OUT else queues[s][0][0]
                assert ours is not None
                if flags & _DIVERGED or op_id != ours.op_id:
                    self._check_diverged(ours, flags, op_id)  # raises unless every rank gave up on it alike
                # The round is complete.
                accepted += 1
                if not now:
                    now = time.monotonic()  # once per pass: the datagrams were all queued by then
                    self._last_result = now
                if attempts[s] == 0:
                    if not rtt_sampled:
                        self._rtt.sample(now - self._sent_at[s])
                        rtt_sampled = True
                    share -= share / w
                else:
                    share += (1.0 - share) / w
                generation[s] += 1  # invalidates the slot's pending retransmission deadline
                j = rounds[s] = rounds[s] + 1
                tsis[s] = (j * w + s) & _TSI_MASK
                pools[s] = slot_pools[s][j & 1]
                if phase == _DATA_OUT:
                    op = ours
                    row = out_row[s]
                    out_op[s] = None
                    op.sum_bytes[row * nb : (row + 1) * nb] = payload  # wire bytes; finish() byte-swaps
                    if flags & _NONFINITE:
                        op.result_nonfinite[row] = True
                    op.progress_at = now
                    op.remaining -= 1
                    if op.remaining == 0:
                        del self._active[op.index]
                        self._on_complete(op)
                    if exp == EXP_UNKNOWN:
                        phases[s] = _NEED_WARMUP
                    elif not queues[s]:
                        raise self._unannounced_exponent(s)
                    else:
                        phases[s] = _READY
                        shared_exp[s] = exp
                else:  # warm-up: the exponent is for the chunk it announced; a data round always follows
                    phases[s] = _READY
                    shared_exp[s] = exp
                pending.add(s)
        finally:
            self._retx_share = share
            stats.results += accepted

    def _unannounced_exponent(self, s: int) -> RuntimeError:
        """The error for a RESULT that gives slot ``s`` a shared exponent although it announced none."""
        return RuntimeError(
            f"protocol error on slot {s}: the RESULT of round tsi "
            f"{((self._round[s] - 1) * self._w + s) & _TSI_MASK} carries a shared exponent for a next "
            "chunk this worker announced as unknown (do all workers use the same window and issue the "
            "same all-reduces?)"
        )

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
        op, row = qd[0]
        return op.block_exps[row]

    def _send_pending(self, now: float) -> None:
        if not self._pending:
            return
        by_op: dict[int, list[int]] = {}
        for s in self._pending:
            phase = self._phase[s]
            if phase == _READY:
                op = self._queue[s][0][0]  # READY implies the announced chunk is queued
                by_op.setdefault(op.index, []).append(s)
            elif phase == _NEED_WARMUP and self._queue[s]:
                self._send_warmup(s, now)
        self._pending.clear()
        for slots in by_op.values():
            self._send_data(slots, now)
        # Every first transmission of this pass shares the send time and the timeout: one timer entry for all.
        self._timers.push_many(now + self._rtt.rto, self._armed)
        self._armed = []

    def _send_warmup(self, s: int, now: float) -> None:
        op = self._queue[s][0][0]
        self._pkt_lanes[s].fill(0)
        # The warm-up belongs to the collective of the chunk it announces: it carries that op (and its ABORT).
        self._pack(s, self._announce(s), _ABORT if op.abort else 0, op.op_id)
        self._phase[s] = _WARMUP_OUT
        if op.started_at is None:
            op.started_at = op.progress_at = now
        self.stats.warmups_sent += 1
        self._first_send(s, now)

    def _send_data(self, slots: list[int], now: float) -> None:
        """Quantize the head chunks of ``slots`` (all of one operation) in one call and send them."""
        queues = self._queue
        op = queues[slots[0]][0][0]
        rows = np.fromiter((queues[s][0][1] for s in slots), dtype=np.intp, count=len(slots))
        shared = np.fromiter((self._shared_exp[s] for s in slots), dtype=np.int16, count=len(slots))
        staged = op.staged
        if staged.exact:
            payload = staged.blocks[rows]
        else:
            own = staged.exps[rows]
            if np.any(own > shared):
                bad = int(np.argmax(own > shared))
                raise RuntimeError(
                    f"protocol error: chunk {op.first_chunk + int(rows[bad])} has exponent {int(own[bad])} above "
                    f"the shared exponent {int(shared[bad])} (do all workers issue the same all-reduces?)"
                )
            payload = q.quantize(staged.blocks[rows], shared, self._n, own=(own, staged.nonfinite[rows]))
        if op.started_at is None:
            op.started_at = op.progress_at = now
        op.used_exps[rows] = shared
        op.rows_sent += len(slots)
        # Big-endian once for the whole batch; then each packet takes its bytes with one slice copy.
        wire = memoryview(np.ascontiguousarray(payload, dtype=LANE_DTYPE).view(np.uint8).reshape(-1))
        nb = self._payload_bytes
        nonfinite = op.block_nonfinite
        op_id, key, base_flags = op.op_id, self._key, _ABORT if op.abort else 0
        pkts, pkt_payload, phases = self._pkt, self._pkt_payload, self._phase
        out_op, out_row, w, b0, job_id = self._out_op, self._out_row, self._w, self._update_b0, self._job_id
        tsis, pools, pack_into = self._tsi, self._pool, _HEADER.pack_into
        attempts, sent_at, last_tx, slot_rto, gen, armed = (
            self._attempts, self._sent_at, self._last_tx, self._slot_rto, self._generation, self._armed
        )
        rto = self._rtt.rto
        send, loss, sent = self._send, self._loss, 0
        # Popping the head chunk and the bodies of _announce, _pack, _first_send and _transmit, inlined: this
        # runs once per packet.
        for i, (s, row) in enumerate(zip(slots, rows.tolist())):
            pkt_payload[s][:] = wire[i * nb : (i + 1) * nb]
            out_op[s] = op
            out_row[s] = row
            qd = queues[s]
            entry = qd[0]
            entry[1] += w
            if entry[1] >= entry[0].blocks:
                qd.popleft()
            if qd:
                nxt, nxt_row = qd[0]
                exp = nxt.block_exps[nxt_row]
            else:
                exp = EXP_UNKNOWN
            flags = (base_flags | _NONFINITE) if nonfinite[row] else base_flags
            pack_into(pkts[s], 0, b0, job_id, tsis[s], pools[s], exp, flags, key, op_id)
            phases[s] = _DATA_OUT
            attempts[s] = 0
            sent_at[s] = last_tx[s] = now
            slot_rto[s] = rto
            armed.append((s, gen[s]))
            if loss and self._rng.random() < loss:
                self.stats.dropped_on_purpose += 1
                continue
            try:
                send(pkts[s])
            except OSError as exc:
                self._send_failed(exc)
            else:
                sent += 1
        self.stats.updates_sent += sent
        self.stats.bytes_sent += sent * self._msg_len

    def _pack(self, s: int, exp: int, flags: int, op_id: int) -> None:
        """Write the header of the slot's current round (its constant fields were validated at start)."""
        _HEADER.pack_into(
            self._pkt[s], 0, self._update_b0, self._job_id, self._tsi[s], self._pool[s], exp, flags, self._key, op_id
        )

    def _first_send(self, s: int, now: float) -> None:
        """Send the slot's round for the first time; _send_pending arms the timers of the whole pass."""
        self._attempts[s] = 0
        self._sent_at[s] = self._last_tx[s] = now
        self._slot_rto[s] = self._rtt.rto
        self._armed.append((s, self._generation[s]))
        self._transmit(s)

    def _retransmit_expired(self, now: float) -> None:
        gen = self._generation
        fired = False
        for s, g in self._timers.pop_expired(now):
            if g != gen[s] or self._phase[s] < _WARMUP_OUT:
                continue
            fired = True
            self._attempts[s] += 1
            if self._last_result > self._last_tx[s]:
                # The job moved on since this slot last sent: the network and the peers are alive, a packet of
                # this round was lost. Retry at the normal timeout rather than after a backoff.
                rto = self._rtt.rto
            else:  # nothing arrived at all: back off (a peer is slow or gone, or the switch is down)
                rto = min(self._slot_rto[s] * 2, self.config.rto.maximum)
            self._slot_rto[s] = rto
            self._timers.push(now + rto, s, g)
            self.stats.retransmissions += 1
            self._last_tx[s] = now
            self._transmit(s)  # the same bytes as the first transmission
        if fired and self._retx_share > 0.8:
            # Most rounds need a retransmission: far more than loss explains, so the timeout is too short
            # (Karn's rule starves the estimator exactly then). Double it once per scan, as TCP does.
            self._rtt.backoff()
        self._timers.discard_stale(gen)

    def _transmit(self, s: int) -> None:
        stats = self.stats
        if self._loss and self._rng.random() < self._loss:
            stats.dropped_on_purpose += 1
            return
        try:
            self._send(self._pkt[s])
        except OSError as exc:
            self._send_failed(exc)
            return
        stats.updates_sent += 1
        stats.bytes_sent += self._msg_len

    def _send_failed(self, exc: OSError) -> None:
        """Count a send the kernel refused for now (as good as lost: the retransmission timer covers it)."""
        if isinstance(exc, BlockingIOError) or exc.errno in (errno.ECONNREFUSED, errno.ENOBUFS):
            self.stats.send_buffer_full += 1
        else:
            raise exc

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
            if (phase == Phase.DATA_OUT and self._out_op[s] is op) or (
                phase == Phase.WARMUP_OUT and self._queue[s][0][0] is op
            ):
                missing.append((s, (self._round[s] * self._w + s) & _TSI_MASK))
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
