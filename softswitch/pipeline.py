"""The software switch's data path: the pipeline of docs/protocol.md, packet for packet.

``Pipeline(state).process(frame, ingress_port)`` parses one Ethernet frame, applies the aggregation semantics
(or ARP / L2 forwarding for ordinary traffic) and returns the frames to send as ``(egress port, bytes)``.
Tables, multicast groups and counters live in a ``SwitchState`` that the P4Runtime server writes; the slot
registers live here, as numpy arrays, and ``reset()`` zeroes them when a pipeline is pushed.

Speed notes (docs/softswitch.md has more): the headers of an aggregation packet are read with one
``struct.unpack_from`` from the frame buffer, table entries are decoded into plain tuples once and cached until
``SwitchState.generation`` changes, registers and counters are accessed through memoryviews, lanes are added as
one numpy operation on a big-endian view of the frame, and the drop simulator draws random numbers in batches.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import Final

import numpy as np

from netagg.constants import (
    AGG_UDP_PORT,
    FLAGS_DEFINED,
    FLOOD_MCAST_GROUP,
    JOB_MCAST_GROUP_BASE,
    LANE_BYTES,
    LANES_PER_BLOCK,
    MAX_LANES,
    NUM_DROP_REASONS,
    NUM_JOB_STATS,
    POOL_SLOTS,
    SIZE_CODES,
    WIRE_VERSION,
    DropReason,
    Flag,
    JobStat,
    MsgType,
)
from netagg.wire import (
    AGG_OFFSET,
    ETH_HEADER_BYTES,
    HEADER_BYTES,
    HEADER_FIELDS,
    IPV4_HEADER_BYTES,
    LANE_DTYPE,
    SLOT_MAX,
    U32_MAX,
    header_byte0,
    header_struct,
    tsi_newer,
)

from .state import SwitchState, Table

log = logging.getLogger(__name__)

#: One egress frame: (egress port, frame bytes).
Output = tuple[int, bytes]

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
IPPROTO_UDP: Final = 17
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2

_IP_OFFSET: Final = ETH_HEADER_BYTES
_UDP_OFFSET: Final = ETH_HEADER_BYTES + IPV4_HEADER_BYTES
_LANES_OFFSET: Final = AGG_OFFSET + HEADER_BYTES
_ARP_BYTES: Final = 28  # ARP for IPv4 over Ethernet

_ETHERTYPE = struct.Struct("!H")
# IPv4 without options: ver_ihl, tos, total length, id, flags/fragment, ttl, protocol, checksum, src, dst.
_IPV4_FORMAT: Final = "BBHHHBBHII"
# UDP: source port, destination port, length, checksum.
_UDP_FORMAT: Final = "HHHH"
# The aggregation header as netagg.wire packs it: byte 0, job, tsi, pool_index, exp (signed), flags, key, op.
_AGG_FORMAT: Final = header_struct().format.lstrip("!")
_IPV4 = struct.Struct("!" + _IPV4_FORMAT)
_UDP = struct.Struct("!" + _UDP_FORMAT)
# EtherType, IPv4, UDP and aggregation headers of an aggregation packet, in one unpack.
_ALL_HEADERS = struct.Struct("!12xH" + _IPV4_FORMAT + _UDP_FORMAT + _AGG_FORMAT)
assert _ALL_HEADERS.size == _LANES_OFFSET
# Where the aggregation header's fields start in an ``_ALL_HEADERS`` tuple (after EtherType, IPv4 and UDP).
_AGG_FIELDS_AT: Final = 1 + len(_IPV4_FORMAT) + len(_UDP_FORMAT)
assert len(_ALL_HEADERS.unpack(bytes(_ALL_HEADERS.size))) == _AGG_FIELDS_AT + len(
    header_struct().unpack(bytes(HEADER_BYTES))
)
# ARP: htype, ptype, hlen, plen, oper, sha, spa, tha, tpa.
_ARP = struct.Struct("!HHBBH6s4s6s4s")
# Every header of a RESULT copy in front of its lanes, written in one call per copy: Ethernet, IPv4, UDP and the
# aggregation header (whose key differs from copy to copy).
_RESULT_HEADERS = struct.Struct("!6s6sH" + _IPV4_FORMAT + _UDP_FORMAT + _AGG_FORMAT)
assert _RESULT_HEADERS.size == _LANES_OFFSET


def _byte0_field(name: str) -> tuple[int, int]:
    """(shift, mask) of a field of header byte 0, from netagg.wire.HEADER_FIELDS."""
    offset = 0
    for field, width in HEADER_FIELDS:
        if field == name:
            shift = 8 - offset - width
            assert shift >= 0, f"{name} is not in header byte 0"
            return shift, (1 << width) - 1
        offset += width
    raise KeyError(name)


_VERSION_SHIFT, _ = _byte0_field("version")
_MSG_TYPE_SHIFT, _MSG_TYPE_MASK = _byte0_field("msg_type")
_RESERVED_SHIFT, _RESERVED_BITS = _byte0_field("reserved")
_RESERVED_MASK: Final = _RESERVED_BITS << _RESERVED_SHIFT
_SIZE_SHIFT, _SIZE_MASK = _byte0_field("size")
assert _SIZE_SHIFT == 0
# pool_index is set:1 | slot:15.
_SET_SHIFT: Final = SLOT_MAX.bit_length()

_MAX_SIZE_CODE: Final = max(SIZE_CODES)
_UPDATE: Final = int(MsgType.UPDATE)
#: Byte 0 of a RESULT, by size code.
_RESULT_BYTE0: Final = tuple(header_byte0(MsgType.RESULT, size) for size in range(_MAX_SIZE_CODE + 1))
_MISMATCH: Final = int(Flag.MISMATCH)

_PARSER_ERROR: Final = int(DropReason.PARSER_ERROR)
_UNKNOWN_WORKER: Final = int(DropReason.UNKNOWN_WORKER)
_BAD_MSG_TYPE: Final = int(DropReason.BAD_MSG_TYPE)
_RESERVED_BIT: Final = int(DropReason.RESERVED_BIT)
_BAD_SIZE: Final = int(DropReason.BAD_SIZE)
_BAD_LENGTH: Final = int(DropReason.BAD_LENGTH)
_SLOT_OUT_OF_RANGE: Final = int(DropReason.SLOT_OUT_OF_RANGE)
_DUPLICATE_PENDING: Final = int(DropReason.DUPLICATE_PENDING)
_STALE: Final = int(DropReason.STALE)
_SIMULATED_LOSS: Final = int(DropReason.SIMULATED_LOSS)
_BAD_VERSION: Final = int(DropReason.BAD_VERSION)
_BAD_KEY: Final = int(DropReason.BAD_KEY)
_INTERNAL_ERROR: Final = int(DropReason.INTERNAL_ERROR)

_AGGREGATED: Final = int(JobStat.AGGREGATED)
_COMPLETED: Final = int(JobStat.COMPLETED)
_RETRANSMIT_ANSWERED: Final = int(JobStat.RETRANSMIT_ANSWERED)

#: Frames and bytes of one received burst (the switch loop reads up to this many frames per port at a time).
BURST_FRAMES: Final = 64
BURST_BYTES: Final = 64 * 2048

#: Random numbers drawn per refill of the drop simulator's buffer.
_RANDOM_BATCH: Final = 4096

# A decoded `workers` entry: worker id, worker count, pool base, pool size, size code, epoch, port, key.
_Worker = tuple[int, int, int, int, int, int, int, int]
# A decoded `results` entry: destination MAC (bytes), IPv4 address, UDP port, sum of the address's 16-bit words,
# the worker's key.
_ResultDst = tuple[bytes, int, int, int, int]

_MISS: Final = object()  # cache marker for "looked up, no usable entry"


def _mac_bytes(value: int) -> bytes:
    return (value & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")


class Burst:
    """Frames received together: one buffer, and per frame a row (offset in the buffer, length, ingress port)."""

    def __init__(self, frames: int = BURST_FRAMES, nbytes: int = BURST_BYTES) -> None:
        self.buffer = bytearray(nbytes)
        self.view = memoryview(self.buffer)
        self.meta = np.zeros((frames, 3), dtype=np.int64)
        self.count = 0
        self.used = 0

    def clear(self) -> None:
        self.count = 0
        self.used = 0

    def append(self, port: int, frame: bytes | bytearray | memoryview) -> bool:
        """Copy one frame in; False (nothing copied) when the burst has no room for it."""
        n = len(frame)
        i = self.count
        if i >= len(self.meta) or self.used + n > len(self.buffer):
            return False
        self.view[self.used : self.used + n] = frame
        self.meta[i] = (self.used, n, port)
        self.used += n
        self.count = i + 1
        return True

    def frames(self) -> list[Output]:
        """Every frame as (port, bytes), in order (tests and slow paths)."""
        return [(int(p), bytes(self.view[o : o + n])) for o, n, p in self.meta[: self.count].tolist()]


class OutBurst(Burst):
    """Frames to send, in order; ``oversize`` holds any single frame larger than the whole buffer."""

    def __init__(self, frames: int = BURST_FRAMES * 4, nbytes: int = BURST_BYTES * 4) -> None:
        super().__init__(frames, nbytes)
        self.oversize: list[Output] = []

    def clear(self) -> None:
        super().clear()
        self.oversize.clear()


class Registers:
    """The slot registers: one entry per slot copy, index ``set * POOL_SLOTS + pool_base + slot``."""

    def __init__(self) -> None:
        copies = 2 * POOL_SLOTS
        self.epoch = np.zeros(copies, dtype=np.uint32)
        self.bitmap = np.zeros(copies, dtype=np.uint32)
        self.count = np.zeros(copies, dtype=np.uint8)
        self.tsi = np.zeros(copies, dtype=np.uint32)
        self.exp = np.zeros(copies, dtype=np.int8)
        self.flags = np.zeros(copies, dtype=np.uint8)
        self.op = np.zeros(copies, dtype=np.uint32)
        # Native-endian running sums; packets are big-endian and converted once per add.
        self.lanes = np.zeros((copies, MAX_LANES), dtype=np.int32)
        # The data path reads and writes single entries through memoryviews of the same buffers: indexing
        # one gives and takes plain ints, several times cheaper than numpy scalar access.
        self.v_epoch = memoryview(self.epoch)
        self.v_bitmap = memoryview(self.bitmap)
        self.v_count = memoryview(self.count)
        self.v_tsi = memoryview(self.tsi)
        self.v_exp = memoryview(self.exp)
        self.v_flags = memoryview(self.flags)
        self.v_op = memoryview(self.op)
        #: One row view per copy, so a packet slices a 1-D view instead of indexing the 2-D array.
        self.rows = list(self.lanes)

    def reset(self) -> None:
        """Zero every register in place (the data path keeps references to these arrays)."""
        for array in (self.epoch, self.bitmap, self.count, self.tsi, self.exp, self.flags, self.op, self.lanes):
            array.fill(0)


class Pipeline:
    """The data path of the software switch (see docs/protocol.md for the semantics it implements)."""

    def __init__(self, state: SwitchState, seed: int | None = None) -> None:
        self.state = state
        self.registers = Registers()
        self._rng = np.random.default_rng(seed)
        self._random: list[int] = []
        self._random_next = 0
        self._generation = -1
        self._loaded = False
        self._lock = threading.Lock()
        #: Frames dropped because the pipeline itself failed on them (a bug; logged once).
        self.internal_errors = 0
        self._refresh()

    # ----------------------------------------------------------------------------------------------- control

    def reset(self) -> None:
        """Zero all registers (called when a pipeline config is pushed) and drop every cached lookup."""
        # The lock keeps a packet being processed on the data path thread from writing into freshly zeroed
        # registers (a stale epoch there could equal one the controller assigns after the push).
        with self._lock:
            self.registers.reset()
            self._generation = -1

    def agg_source(self) -> tuple[bytes, int] | None:
        """The switch's aggregation (MAC, IPv4) from ``agg_addr``'s default action; None until it is set."""
        with self._lock:
            if self.state.generation != self._generation:
                self._refresh()
            return self._agg_src

    def _refresh(self) -> None:
        """Rebuild the lookup caches from the state (on every control-plane write)."""
        state = self.state
        # Read the generation first: a write racing with this refresh bumps it again and we refresh once more.
        self._generation = state.generation
        tables = state.tables
        self._loaded = bool(tables)
        empty = Table("", (), None, None, 0)  # type: ignore[arg-type]
        self._t_workers = tables.get("workers", empty)
        self._t_results = tables.get("results", empty)
        self._t_l2 = tables.get("l2_forward", empty)
        self._t_arp = tables.get("arp_reply", empty)
        self._t_ingress_loss = tables.get("ingress_loss", empty)
        self._t_egress_loss = tables.get("egress_loss", empty)
        self._groups = state.mcast_groups
        # Skip the loss lookups entirely while no drop simulator is configured (the common case).
        self._ingress_loss_on = self._loss_configured(self._t_ingress_loss)
        self._egress_loss_on = self._loss_configured(self._t_egress_loss)
        self._workers: dict[tuple[int, int, int], object] = {}
        self._results: dict[tuple[int, int], object] = {}
        self._ingress_loss: dict[int, int] = {}
        self._egress_loss: dict[int, int] = {}
        agg = tables.get("agg_addr")
        default = agg.default if agg is not None else None
        if default is not None and default.name == "set_agg_addr":
            self._agg_src: tuple[bytes, int] | None = (
                _mac_bytes(default.params.get("mac", 0)),
                default.params.get("addr", 0) & 0xFFFF_FFFF,
            )
        else:
            self._agg_src = None
        counters = state.counters

        def packets_bytes(name: str) -> tuple[memoryview, memoryview] | None:
            # memoryviews of the counter arrays: `view[i] += n` on plain ints, no numpy scalars per packet.
            counter = counters.get(name)
            return (memoryview(counter.packets), memoryview(counter.bytes)) if counter is not None else None

        self._c_drops = packets_bytes("drops")
        self._c_job_drops = packets_bytes("job_drops")
        self._c_job_stats = packets_bytes("job_stats")

    # ------------------------------------------------------------------------------------------ lookups

    def _worker(self, job: int, src: int, sport: int) -> _Worker | object:
        """The decoded ``workers`` entry, or ``_MISS``; cached until the next control-plane write."""
        key = (job, src, sport)
        hit = self._workers.get(key)
        if hit is None:
            action = self._t_workers.entries.get(key)
            if action is None or action.name != "set_worker":
                hit = _MISS
            else:
                p = action.params
                # Masked to the P4Info widths, as the target's metadata fields would hold them.
                hit = (
                    p.get("worker_id", 0) & 0xFF,
                    p.get("num_workers", 0) & 0xFF,
                    p.get("pool_base", 0) & 0xFFFF,
                    p.get("pool_size", 0) & 0xFFFF,
                    p.get("size", 0) & 0xFF,
                    p.get("epoch", 0) & U32_MAX,
                    p.get("port", 0) & 0x1FF,
                    p.get("key", 0) & U32_MAX,
                )
            self._workers[key] = hit
        return hit  # type: ignore[return-value]

    def _result_dst(self, job: int, worker_id: int) -> _ResultDst | None:
        key = (job, worker_id)
        hit = self._results.get(key)
        if hit is None:
            action = self._t_results.entries.get(key)
            if action is None or action.name != "set_result_dst":
                hit = _MISS
            else:
                p = action.params
                addr = p.get("addr", 0) & U32_MAX
                hit = (
                    _mac_bytes(p.get("mac", 0)),
                    addr,
                    p.get("port", 0) & 0xFFFF,
                    (addr >> 16) + (addr & 0xFFFF),
                    p.get("key", 0) & U32_MAX,
                )
            self._results[key] = hit
        return None if hit is _MISS else hit  # type: ignore[return-value]

    @staticmethod
    def _loss_configured(table: Table) -> bool:
        default = table.default
        return bool(table.entries) or (default is not None and default.name == "set_loss")

    @staticmethod
    def _loss_threshold(table: Table, cache: dict[int, int], port: int) -> int:
        threshold = cache.get(port)
        if threshold is None:
            action = table.entries.get((port,))
            if action is None:
                action = table.default
            threshold = 0
            if action is not None and action.name == "set_loss":
                threshold = action.params.get("threshold", 0) & 0xFFFF_FFFF
            cache[port] = threshold
        return threshold

    def _lost(self, threshold: int) -> bool:
        """One draw of the drop simulator: True when a uniform uint32 is below ``threshold``."""
        i = self._random_next
        if i >= len(self._random):
            self._random = self._rng.integers(0, 1 << 32, size=_RANDOM_BATCH, dtype=np.uint64).tolist()
            i = 0
        self._random_next = i + 1
        return self._random[i] < threshold

    # ----------------------------------------------------------------------------------------- counting

    def _drop(self, reason: int, job: int, nbytes: int) -> None:
        """Count a drop in ``drops`` and, when the job byte was parsed (job >= 0), in ``job_drops``."""
        c = self._c_drops
        if c is not None:
            c[0][reason] += 1
            c[1][reason] += nbytes
        if job >= 0:
            c = self._c_job_drops
            if c is not None:
                index = job * NUM_DROP_REASONS + reason
                c[0][index] += 1
                c[1][index] += nbytes

    def _stat(self, job: int, stat: int, nbytes: int) -> None:
        c = self._c_job_stats
        if c is not None:
            index = job * NUM_JOB_STATS + stat
            c[0][index] += 1
            c[1][index] += nbytes

    # ---------------------------------------------------------------------------------------- data path

    def process(self, frame: bytes | bytearray | memoryview, ingress_port: int) -> list[Output]:
        """Run one frame through the pipeline; return the frames to send. Never raises for any input."""
        with self._lock:
            if self.state.generation != self._generation:
                self._refresh()
            return self._process_frame(frame, ingress_port)

    def process_burst(self, burst: Burst, out: OutBurst, flush: Callable[[OutBurst], None]) -> None:
        """Run every frame of ``burst`` through the pipeline, appending what to send to ``out`` in order.

        ``flush(out)`` is called whenever ``out`` is full; it must send and clear it. The caller sends what is
        left after the call. Never raises for any input.
        """
        with self._lock:
            if self.state.generation != self._generation:
                self._refresh()
            for i in range(burst.count):
                offset, length, port = burst.meta[i].tolist()
                self._emit(self._process_frame(burst.view[offset : offset + length], port), out, flush)

    @staticmethod
    def _emit(outputs: list[Output], out: OutBurst, flush: Callable[[OutBurst], None]) -> None:
        for port, data in outputs:
            if not out.append(port, data):
                flush(out)
                if not out.append(port, data):  # larger than the whole buffer: sent alone, still in order
                    out.oversize.append((port, data))
                    flush(out)

    def _process_frame(self, frame: bytes | bytearray | memoryview, ingress_port: int) -> list[Output]:
        """``process`` for one frame, with the lock held and the caches current."""
        try:
            if len(frame) >= _LANES_OFFSET:
                # Fast path: every header of an aggregation packet in one unpack.
                h = _ALL_HEADERS.unpack_from(frame)
                if (
                    h[0] == ETHERTYPE_IPV4
                    and h[1] == 0x45
                    and h[7] == IPPROTO_UDP
                    and h[12] == AGG_UDP_PORT
                ):
                    if not self._loaded:
                        return []
                    return self._aggregate(frame, len(frame), ingress_port, h)
            return self._process(frame, ingress_port)
        except Exception:
            # A bug here must not stop the switch: drop the frame and count it as INTERNAL_ERROR, never as a
            # reason that blames the sender (PARSER_ERROR would make a bug look like malformed traffic). Only
            # the first is logged: one traceback finds the bug, one per packet would flood the log.
            self._internal_error(len(frame), ingress_port)
            return []

    def _internal_error(self, nbytes: int, ingress_port: int) -> None:
        """Count a frame the switch failed on (call from an ``except`` block: the first one is logged)."""
        self.internal_errors += 1
        if self.internal_errors == 1:
            log.exception(
                "internal error on a frame of %d bytes from port %d: dropped and counted as INTERNAL_ERROR "
                "(further internal errors are only counted)",
                nbytes,
                ingress_port,
            )
        self._drop(_INTERNAL_ERROR, -1, nbytes)

    def _process(self, frame: bytes | bytearray | memoryview, ingress_port: int) -> list[Output]:
        if not self._loaded:
            return []  # no pipeline loaded: drop everything
        n = len(frame)
        if n < ETH_HEADER_BYTES:
            self._drop(_PARSER_ERROR, -1, n)
            return []
        (ethertype,) = _ETHERTYPE.unpack_from(frame, 12)
        if ethertype == ETHERTYPE_IPV4:
            if n < _UDP_OFFSET:
                self._drop(_PARSER_ERROR, -1, n)
                return []
            ip = _IPV4.unpack_from(frame, _IP_OFFSET)
            if ip[0] == 0x45 and ip[6] == IPPROTO_UDP:
                if n < AGG_OFFSET:
                    self._drop(_PARSER_ERROR, -1, n)
                    return []
                udp = _UDP.unpack_from(frame, _UDP_OFFSET)
                if udp[1] == AGG_UDP_PORT:
                    # Aggregation packets with a whole header took the fast path in process(): this one is
                    # too short for its aggregation header.
                    self._drop(_PARSER_ERROR, -1, n)
                    return []
        elif ethertype == ETHERTYPE_ARP:
            if n < ETH_HEADER_BYTES + _ARP_BYTES:
                self._drop(_PARSER_ERROR, -1, n)
                return []
            reply = self._arp(frame, ingress_port)
            if reply is not None:
                return reply
        return self._l2(frame, ingress_port)

    def _l2(self, frame: bytes | bytearray | memoryview, ingress_port: int) -> list[Output]:
        dst = int.from_bytes(frame[0:6], "big")
        action = self._t_l2.entries.get((dst,))
        if action is None:
            action = self._t_l2.default
        if action is None:
            return []
        if action.name == "forward":
            return [(action.params.get("port", 0), bytes(frame))]
        if action.name == "flood":
            data = bytes(frame)
            return [
                (port, data) for port, _rid in self._groups.get(FLOOD_MCAST_GROUP, ()) if port != ingress_port
            ]
        return []

    def _arp(self, frame: bytes | bytearray | memoryview, ingress_port: int) -> list[Output] | None:
        """Answer an ARP request for an address in ``arp_reply``; None if the frame is ordinary traffic."""
        htype, ptype, hlen, plen, oper, sha, spa, _tha, tpa = _ARP.unpack_from(frame, ETH_HEADER_BYTES)
        if oper != ARP_REQUEST or htype != 1 or ptype != ETHERTYPE_IPV4 or hlen != 6 or plen != 4:
            return None
        action = self._t_arp.entries.get((int.from_bytes(tpa, "big"),))
        if action is None or action.name != "reply_arp":
            return None
        mac = _mac_bytes(action.params.get("mac", 0))
        reply = bytearray(frame)
        reply[0:6] = frame[6:12]
        reply[6:12] = mac
        _ARP.pack_into(reply, ETH_HEADER_BYTES, htype, ptype, hlen, plen, ARP_REPLY, mac, tpa, sha, spa)
        return [(ingress_port, bytes(reply))]

    def _aggregate(
        self,
        frame: bytes | bytearray | memoryview,
        n: int,
        ingress_port: int,
        h: tuple[int, ...],
    ) -> list[Output]:
        """Steps 1-9 of docs/protocol.md for a UDP packet to the aggregation port.

        ``h`` holds every header field up to the aggregation header: ``_ALL_HEADERS`` order (EtherType, IPv4
        fields 1-10, UDP 11-14, then the aggregation header's fields).
        """
        # 1. Parse the lanes a defined size code announces. A frame of another version has a layout this switch
        # does not know, so it announces no payload (as on the P4 target, whose parser stops after the header).
        b0, job, tsi, pool_index, exp, flags, key, op = h[_AGG_FIELDS_AT:]
        version_ok = b0 >> _VERSION_SHIFT == WIRE_VERSION
        size = b0 & _SIZE_MASK
        lanes = LANES_PER_BLOCK << size if version_ok and size <= _MAX_SIZE_CODE else 0
        end = _LANES_OFFSET + lanes * LANE_BYTES
        if n < end:
            self._drop(_PARSER_ERROR, job, n)
            return []
        # 2. Drop simulator at ingress.
        if self._ingress_loss_on:
            threshold = self._loss_threshold(self._t_ingress_loss, self._ingress_loss, ingress_port)
            if threshold and self._lost(threshold):
                self._drop(_SIMULATED_LOSS, job, n)
                return []
        # 3. Header checks.
        if not version_ok:
            self._drop(_BAD_VERSION, job, n)
            return []
        if (b0 >> _MSG_TYPE_SHIFT) & _MSG_TYPE_MASK != _UPDATE:
            self._drop(_BAD_MSG_TYPE, job, n)
            return []
        if b0 & _RESERVED_MASK or flags & ~FLAGS_DEFINED:
            self._drop(_RESERVED_BIT, job, n)
            return []
        # 4. Who sent it, and does it know the sender's key (a forged source address and port alone is not enough).
        worker = self._workers.get((job, h[9], h[11])) or self._worker(job, h[9], h[11])
        if worker is _MISS:
            self._drop(_UNKNOWN_WORKER, job, n)
            return []
        worker_id, num_workers, pool_base, pool_size, admitted_size, epoch, worker_port, worker_key = worker
        if key != worker_key:
            self._drop(_BAD_KEY, job, n)
            return []
        # 5. Admission checks.
        if size != admitted_size or size > _MAX_SIZE_CODE:  # an undefined code even if the entry admits it
            self._drop(_BAD_SIZE, job, n)
            return []
        if h[13] != 8 + HEADER_BYTES + lanes * LANE_BYTES:
            self._drop(_BAD_LENGTH, job, n)
            return []
        slot = pool_index & SLOT_MAX
        slot_set = pool_index >> _SET_SHIFT
        # A pool that runs past the register arrays is a controller error; treat its tail as out of range.
        if slot >= pool_size or pool_base + slot >= POOL_SLOTS:
            self._drop(_SLOT_OUT_OF_RANGE, job, n)
            return []
        # 6. Read the copy's state; a copy last written under another epoch is fresh.
        regs = self.registers
        v_bitmap = regs.v_bitmap
        v_tsi = regs.v_tsi
        index = slot_set * POOL_SLOTS + pool_base + slot
        fresh = regs.v_epoch[index] != epoch
        if fresh:
            bitmap = 0
            count = 0
        else:
            bitmap = v_bitmap[index]
            count = regs.v_count[index]
        bit = (1 << worker_id) & 0xFFFF_FFFF
        # 7. Decide.
        if bitmap & bit:
            if tsi != v_tsi[index]:
                self._drop(_STALE, job, n)  # a delayed copy of one of the worker's older rounds on this copy
                return []
            if count:
                self._drop(_DUPLICATE_PENDING, job, n)
                return []
            self._stat(job, _RETRANSMIT_ANSWERED, n)
            dst = self._result_dst(job, worker_id)
            if dst is None:
                return []
            return self._result_frames(frame, h, end, index, lanes, size, job, tsi, pool_index, [(worker_port, dst)])
        packet_lanes = np.frombuffer(frame, dtype=LANE_DTYPE, count=lanes, offset=_LANES_OFFSET)
        if count == 0:
            # Only a newer tsi opens a round: a same or older one is a delayed duplicate of a round that already
            # completed here (its sender's bit was cleared by its send on the other copy), and a round it opened
            # would never complete.
            if not fresh and not tsi_newer(tsi, v_tsi[index]):
                self._drop(_STALE, job, n)
                return []
            # First contribution of a new round.
            regs.rows[index][:lanes] = packet_lanes
            regs.v_exp[index] = exp
            regs.v_flags[index] = flags
            regs.v_op[index] = op
            v_tsi[index] = tsi
            regs.v_epoch[index] = epoch
            count = (num_workers - 1) & 0xFF
            bitmap = bit  # a new round starts with this worker alone, whatever bits a broken round left
        else:
            if tsi != v_tsi[index]:
                self._drop(_STALE, job, n)
                return []
            row = regs.rows[index][:lanes]
            np.add(row, packet_lanes, out=row)  # int32 + int32: wraps around; the input is byteswapped once
            regs.v_exp[index] = max(regs.v_exp[index], exp)
            if op != regs.v_op[index]:
                flags |= _MISMATCH  # still added: every worker learns of the mismatch from the RESULT
            if flags:
                regs.v_flags[index] |= flags
            count -= 1
            bitmap |= bit
        regs.v_count[index] = count
        v_bitmap[index] = bitmap  # set above: just this worker on a new round, OR-ed in on an add
        other = (1 - slot_set) * POOL_SLOTS + pool_base + slot
        v_bitmap[other] &= ~bit & 0xFFFF_FFFF
        counters = self._c_job_stats
        if counters is not None:
            stat_index = job * NUM_JOB_STATS + _AGGREGATED
            counters[0][stat_index] += 1
            counters[1][stat_index] += n
        # 8. Complete? Multicast the sum to every worker of the job.
        if count:
            return []
        self._stat(job, _COMPLETED, n)
        copies = []
        for port, rid in self._groups.get(JOB_MCAST_GROUP_BASE + job, ()):
            dst = self._result_dst(job, rid)
            if dst is not None:  # no `results` entry: nothing to address the copy to (dropped, not counted)
                copies.append((port, dst))
        return self._result_frames(frame, h, end, index, lanes, size, job, tsi, pool_index, copies)

    def _result_frames(
        self,
        frame: bytes | bytearray | memoryview,
        h: tuple[int, ...],
        end: int,
        index: int,
        lanes: int,
        size: int,
        job: int,
        tsi: int,
        pool_index: int,
        copies: list[tuple[int, _ResultDst]],
    ) -> list[Output]:
        """Step 9 for the RESULT copies (egress port, destination) of the packet ``h`` on slot copy ``index``:
        the copy's sum, exponent, flags and op, each copy addressed to its worker and carrying that worker's
        key, the IPv4 checksum computed incrementally, the egress drop simulator run per copy."""
        regs = self.registers
        # The lanes (the copy's sum) and any bytes past them are the same in every copy: built once. Trailing
        # bytes ride along, as on a hardware target.
        body = regs.rows[index][:lanes].astype(LANE_DTYPE).tobytes()
        n = len(frame)
        if n > end:
            body += frame[end:n]
        b0 = _RESULT_BYTE0[size]
        exp = regs.v_exp[index]
        flags = regs.v_flags[index]
        op = regs.v_op[index]
        src = self._agg_src
        if src is not None:
            src_mac, src_addr = src
        else:  # agg_addr without set_agg_addr: the source fields stay as they were, as on a P4 target
            src_mac, src_addr = bytes(frame[6:12]), h[9]
        ver_ihl, tos, total_length, ident, frag, ttl, proto = h[1:8]
        udp_length = h[13]
        # One's-complement sum of every header word but the destination, shared by all copies.
        base = (ver_ihl << 8 | tos) + total_length + ident + frag + (ttl << 8 | proto)
        base += (src_addr >> 16) + (src_addr & 0xFFFF)
        pack = _RESULT_HEADERS.pack
        egress_loss = self._egress_loss_on
        outputs = []
        for port, (dst_mac, dst_addr, dst_port, dst_sum, dst_key) in copies:
            if egress_loss:
                threshold = self._loss_threshold(self._t_egress_loss, self._egress_loss, port)
                if threshold and self._lost(threshold):
                    self._drop(_SIMULATED_LOSS, job, _RESULT_HEADERS.size + len(body))
                    continue
            total = base + dst_sum
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            headers = pack(
                dst_mac, src_mac, ETHERTYPE_IPV4,
                ver_ihl, tos, total_length, ident, frag, ttl, proto, ~total & 0xFFFF, src_addr, dst_addr,
                AGG_UDP_PORT, dst_port, udp_length, 0,
                b0, job, tsi, pool_index, exp, flags, dst_key, op,
            )  # fmt: skip
            outputs.append((port, headers + body))
        return outputs
