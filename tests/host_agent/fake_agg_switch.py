"""A small in-process aggregation switch for host agent tests: docs/protocol.md's UPDATE semantics for one job.

It speaks wire format v2 over a UDP socket on 127.0.0.1 (UPDATEs in, RESULTs out to each worker's registered
address): each worker has a key (UPDATEs with another key are dropped, each RESULT carries its receiver's key), a
round keeps its first contribution's ``op`` and is flagged MISMATCH when another contribution's differs, flags
(ABORT included) are ORed, and a complete copy opens a new round only for a newer tsi in serial-number order.
It can impair traffic both ways, seeded: loss, duplication and reordering (a held packet is released after the next
one, or after ``hold_timeout``). ``hold()``/``release()`` pause processing, so tests can queue work on every worker
before the first RESULT exists. ``egress_link`` (a bottleneck.Bottleneck) shapes its RESULTs: a rate and a
drop-tail queue, shared by every FakeSwitch given the same one.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from netagg.constants import Flag, MsgType
from netagg.host_agent.session import JoinResult, SwitchEndpoint
from netagg.wire import HEADER_BYTES, LANE_DTYPE, WireError, decode, pack_header, size_for_lanes, tsi_newer


@dataclass
class Impairment:
    """Seeded per-direction faults."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0


@dataclass
class _Copy:
    fresh: bool = True
    bitmap: int = 0
    count: int = 0
    tsi: int = 0
    exp: int = 0
    flags: int = 0
    op: int = 0
    lanes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


class FakeSwitch:
    """One job's aggregation, as the switch does it, on a thread."""

    def __init__(
        self,
        num_workers: int,
        *,
        job: str = "test-job",
        job_id: int = 7,
        lanes: int = 256,
        slots: int = 64,
        epoch: int = 1,
        ingress: Impairment | None = None,
        egress: Impairment | None = None,
        seed: int = 1,
        hold_timeout: float = 0.005,
        egress_link: Any = None,
    ) -> None:
        self.num_workers = num_workers
        self.egress_link = egress_link  # a bottleneck.Bottleneck that RESULTs queue on, or None
        self.job = job
        self.job_id = job_id
        self.lanes = lanes
        self.size = size_for_lanes(lanes)
        self.slots = slots
        self.epoch = epoch
        self.ingress = ingress or Impairment()
        self.egress = egress or Impairment()
        self.hold_timeout = hold_timeout
        self.counters: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._workers: dict[tuple[str, int], int] = {}
        self.keys: dict[int, int] = {}  # worker id -> key, drawn at registration (seeded)
        self._key_rng = random.Random(seed + 0x6B6579)  # its own generator: keys do not shift the faults
        self._first_copy: dict[tuple[tuple[str, int], int], bytes] = {}
        self._addr_of: dict[int, tuple[str, int]] = {}
        self._copies = [[_Copy(lanes=np.zeros(lanes, np.int32)) for _ in range(slots)] for _ in range(2)]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.02)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._held_in: list[tuple[bytes, tuple[str, int]]] = []
        self._held_out: list[tuple[bytes, tuple[str, int]]] = []
        self._held_since = 0.0
        self._thread = threading.Thread(target=self._run, name="fake-agg-switch", daemon=True)

    # --- control -------------------------------------------------------------------------------------------

    def register(self, addr: str, port: int, worker_id: int) -> int:
        """Admit a worker at (addr, port); returns its key."""
        self._workers[(addr, port)] = worker_id
        self._addr_of[worker_id] = (addr, port)
        return self.keys.setdefault(worker_id, self._key_rng.randrange(1, 1 << 32))

    def inject(self, worker_id: int, data: bytes) -> None:
        """Send ``data`` to a worker from the switch's own address (e.g. a forged RESULT the kernel lets through)."""
        self._sock.sendto(data, self._addr_of[worker_id])

    def join_result(self, worker_id: int, rank: int | None = None) -> JoinResult:
        return JoinResult(
            job=self.job,
            job_id=self.job_id,
            worker_id=worker_id,
            world_size=self.num_workers,
            lanes=self.lanes,
            slots=self.slots,
            epoch=self.epoch,
            switch=SwitchEndpoint(mac="02:00:00:00:00:01", addr=self.address[0], port=self.address[1]),
            rank=worker_id if rank is None else rank,
            key=self.keys.setdefault(worker_id, self._key_rng.randrange(1, 1 << 32)),
        )

    def worker_address(self, worker_id: int) -> tuple[str, int]:
        return self._addr_of[worker_id]

    def worker_addresses(self) -> dict[int, tuple[str, int]]:
        return dict(self._addr_of)

    def hold(self) -> None:
        """Stop reading the socket (UPDATEs wait in its buffer) until ``release``."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- data path -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        buf = bytearray(4096)
        while not self._stop.is_set():
            if not self._running.wait(0.02):
                continue
            try:
                n, src = self._sock.recvfrom_into(buf)
            except TimeoutError:
                self._flush_held()
                continue
            except OSError:
                return
            self._impair(self.ingress, bytes(buf[:n]), src, self._held_in, self._process)
            if self._held_since and time.monotonic() - self._held_since > self.hold_timeout:
                self._flush_held()

    def _impair(self, imp: Impairment, data: bytes, addr: Any, held: list, deliver: Any) -> None:
        rng = self._rng
        if imp.loss and rng.random() < imp.loss:
            self.counters["loss"] += 1
            return
        if imp.reorder and rng.random() < imp.reorder:
            held.append((data, addr))
            self._held_since = self._held_since or time.monotonic()
            self.counters["reordered"] += 1
            return
        deliver(data, addr)
        if imp.duplicate and rng.random() < imp.duplicate:
            self.counters["duplicated"] += 1
            deliver(data, addr)
        while held:  # what was held goes out after the packet that overtook it
            deliver(*held.pop(0))
        self._held_since = 0.0 if not (self._held_in or self._held_out) else self._held_since

    def _flush_held(self) -> None:
        while self._held_in:
            self._process(*self._held_in.pop(0))
        while self._held_out:
            self._send(*self._held_out.pop(0))
        self._held_since = 0.0

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.egress_link is not None:
            self.egress_link.enqueue(self._sock, data, addr)
        else:
            self._sock.sendto(data, addr)
        self.counters["results_sent"] += 1

    def _emit(self, data: bytes, addr: tuple[str, int]) -> None:
        self._impair(self.egress, data, addr, self._held_out, self._send)

    def _process(self, data: bytes, src: tuple[str, int]) -> None:
        try:
            h, lanes = decode(data)
        except WireError:
            self.counters["parser_error"] += 1
            return
        first = self._first_copy.setdefault((src, h.tsi), data)
        if first != data:
            self.counters["retransmission_differs"] += (
                1  # a retransmitted UPDATE must repeat the original bytes
            )
        if h.msg_type != MsgType.UPDATE:
            self.counters["bad_msg_type"] += 1
            return
        worker = self._workers.get(src)
        if worker is None or h.job != self.job_id:
            self.counters["unknown_worker"] += 1
            return
        if h.key != self.keys[worker]:
            self.counters["bad_key"] += 1
            return
        if h.size != self.size:
            self.counters["bad_size"] += 1
            return
        if h.slot >= self.slots:
            self.counters["slot_out_of_range"] += 1
            return
        copy = self._copies[h.set][h.slot]
        bit = 1 << worker
        if copy.bitmap & bit:
            if h.tsi != copy.tsi:
                self.counters["stale"] += 1
                return
            if copy.count == 0:
                self.counters["retransmit_answered"] += 1
                self._emit(self._result(h.set, h.slot, worker), self._addr_of[worker])
            else:
                self.counters["duplicate_pending"] += 1
            return
        if copy.count == 0:
            if not copy.fresh and not tsi_newer(h.tsi, copy.tsi):  # an old packet never opens a round
                self.counters["stale"] += 1
                return
            copy.fresh = False
            copy.lanes[:] = lanes
            copy.exp, copy.flags, copy.tsi, copy.op = h.exp, h.flags, h.tsi, h.op
            copy.bitmap = 0
            copy.count = self.num_workers - 1
        else:
            if h.tsi != copy.tsi:
                self.counters["stale"] += 1
                return
            with np.errstate(over="ignore"):
                copy.lanes += lanes.astype(np.int32)
            copy.exp = max(copy.exp, h.exp)
            copy.flags |= h.flags
            if h.op != copy.op:
                copy.flags |= Flag.MISMATCH
                self.counters["mismatch"] += 1
            copy.count -= 1
        copy.bitmap |= bit
        self._copies[1 - h.set][h.slot].bitmap &= ~bit
        self.counters["aggregated"] += 1
        if copy.count == 0:
            self.counters["completed"] += 1
            for wid in range(self.num_workers):
                self._emit(self._result(h.set, h.slot, wid), self._addr_of[wid])

    def _result(self, set_: int, slot: int, worker: int) -> bytes:
        copy = self._copies[set_][slot]
        buf = bytearray(HEADER_BYTES + 4 * self.lanes)
        pack_header(
            buf,
            0,
            msg_type=MsgType.RESULT,
            size=self.size,
            job=self.job_id,
            tsi=copy.tsi,
            slot=slot,
            set=set_,
            exp=copy.exp,
            flags=int(copy.flags),
            key=self.keys[worker],
            op=copy.op,
        )
        np.frombuffer(buf, dtype=LANE_DTYPE, offset=HEADER_BYTES)[:] = copy.lanes
        return bytes(buf)


class FakeController:
    """The job API for a FakeSwitch: join registers the worker (worker id = rank) and answers at once."""

    def __init__(self, switch: FakeSwitch) -> None:
        self.switch = switch
        self.heartbeats: Counter[int] = Counter()
        self.left: list[int] = []
        self.heartbeat_error: Exception | None = None  # raised by heartbeat() when set

    def join(
        self,
        job: str,
        *,
        world_size: int,
        rank: int,
        addr: str,
        port: int,
        lanes: int,
        mac: str | None = None,
        slots: int | None = None,
        timeout: float = 60.0,
        lease_seconds: float | None = None,
    ) -> JoinResult:
        sw = self.switch
        if job != sw.job or world_size != sw.num_workers:
            raise ValueError(
                f"fake switch serves job {sw.job!r} of {sw.num_workers}, not {job!r} of {world_size}"
            )
        key = sw.register(addr, port, rank)
        answer = {
            "key": key,
            "job_id": sw.job_id,
            "worker_id": rank,
            "world_size": world_size,
            "lanes": sw.lanes,
            "slots": min(slots or sw.slots, sw.slots),
            "epoch": sw.epoch,
            "switch": {"mac": "02:00:00:00:00:01", "addr": sw.address[0], "port": sw.address[1]},
        }
        return JoinResult.from_json(answer, job=job, rank=rank)

    def leave(self, job: str, rank: int) -> None:
        self.left.append(rank)

    def heartbeat(self, job: str, rank: int) -> None:
        if self.heartbeat_error is not None:
            raise self.heartbeat_error
        self.heartbeats[rank] += 1
