"""An in-process aggregation switch for host agent tests: the software switch's reference pipeline for one job,
behind a UDP socket on 127.0.0.1, with seeded faults around it.

Aggregation is ``netagg.softswitch.pipeline.Pipeline``, the executable reference of the P4 program
(docs/protocol.md), so the agent is tested against the switch's own slot state machine. Its tables and multicast
group are programmed as the controller programs a switch: the controller's entities (``controller/entries.py``:
the switch-wide ones, then the job's ``workers`` and ``results`` entries and result group, re-installed as each
worker registers) encoded against the committed P4Info and written through the software switch's P4Runtime entity
layer, without gRPC. A datagram enters the pipeline framed as the software switch's UDP mode frames it
(docs/softswitch.md, "UDP mode": port 1, the sender's address and port as IPv4 and UDP source), and each RESULT
frame the pipeline emits leaves as a datagram to the frame's IPv4 and UDP destination.

Faults, both ways and seeded: loss, duplication and reordering (a held packet is released after the next one, or
after ``hold_timeout``). ``hold()``/``release()`` pause reading the socket, so tests can queue work on every worker
before the first RESULT exists. ``inject`` sends a datagram from the switch's address. ``egress_link`` (a
bottleneck.Bottleneck) shapes RESULTs: a rate and a drop-tail queue, shared by every FakeSwitch given the same
one. ``outgoing`` sees each RESULT datagram before the egress faults (a subclass may change it).

``counters``: the pipeline's drop reasons and the job's statistics by lower-case name (``stale``, ``bad_key``,
``aggregated``, ``completed``, ...: netagg.constants ``DropReason`` and ``JobStat``), and what only this layer
sees: ``loss``, ``duplicated``, ``reordered``, ``results_sent``, ``unroutable``, ``mismatch`` (RESULTs the
pipeline flagged MISMATCH) and ``retransmission_differs`` (an UPDATE whose sender used its tsi before with other
bytes: a retransmitted UPDATE must repeat its original).
"""

from __future__ import annotations

import functools
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Self

from finsy import P4Schema as ControllerSchema
from finsy.p4entity import encode_updates
from p4info_contract import committed_bmv2_json, committed_p4info

from netagg.constants import AGG_UDP_PORT, NUM_JOB_STATS, DropReason, Flag, JobStat, MsgType
from netagg.controller.entries import Entity, agg_addr_default, job_entries, job_keys, static_entries
from netagg.controller.jobs import Job, Worker
from netagg.controller.pool import SlotRange
from netagg.controller.switch import resolve_actions
from netagg.controller.topology import ZERO_MAC, Topology
from netagg.host_agent.session import JoinResult, SwitchEndpoint
from netagg.softswitch.p4runtime_entities import EntityStore
from netagg.softswitch.pipeline import Pipeline
from netagg.softswitch.ports import UDP_PORT_NUMBER
from netagg.softswitch.schema import P4Schema, defaults_from_bmv2_json
from netagg.wire import (
    AGG_OFFSET,
    ETH_HEADER_BYTES,
    IPV4_HEADER_BYTES,
    IPV4_UDP,
    UDP_HEADER_BYTES,
    WireError,
    header_struct,
    size_for_lanes,
    unpack_header,
)

#: The switch's aggregation MAC, as the join answers name it.
SWITCH_MAC = "02:00:00:00:00:01"

_HEADER = header_struct()  # (byte 0, job, tsi, pool_index, exp, flags, key, op)
_FLAGS = 5  # index of ``flags`` in a ``_HEADER`` tuple
_ETHERTYPE_IPV4 = b"\x08\x00"


@functools.cache
def _schemas() -> tuple[ControllerSchema, P4Schema]:
    """The committed program's schema as the controller encodes entities with it, and as the switch decodes them."""
    p4info = committed_p4info()
    return ControllerSchema(p4info), P4Schema(p4info, defaults_from_bmv2_json(committed_bmv2_json(), p4info))


@dataclass
class Impairment:
    """Seeded per-direction faults."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0


class FakeSwitch:
    """One job's aggregation by the reference pipeline, on a thread."""

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
        self._counters: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self.keys: dict[int, int] = {}  # worker id -> key, drawn at registration (seeded)
        self._key_rng = random.Random(seed + 0x6B6579)  # its own generator: keys do not shift the faults
        self._first_copy: dict[tuple[tuple[str, int], int], bytes] = {}
        self._addr_of: dict[int, tuple[str, int]] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.02)
        self.address: tuple[str, int] = self._sock.getsockname()
        # The switch as the controller sees it in UDP mode: one port, hosts without MACs.
        self._topology = Topology(
            address="", device_id=1, election_id=1, mac=SWITCH_MAC, addr=self.address[0],
            ports=(UDP_PORT_NUMBER,), hosts=(), udp_mode=True,
        )  # fmt: skip
        self._schema, switch_schema = _schemas()
        self._state = switch_schema.new_state()
        self._store = EntityStore(switch_schema, self._state)
        self._pipeline = Pipeline(self._state, seed=seed)
        self._lock = threading.Lock()  # a job re-install is one step for the data path
        self._installed: Job | None = None
        self._write([+e for e in static_entries(self._topology)] + [~agg_addr_default(self._topology)])
        agg = self._pipeline.agg_source()
        assert agg is not None, "agg_addr's default action was not set"
        self._agg_mac, self._agg_ip = agg
        self._addresses: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._held_in: list[tuple[bytes, tuple[str, int]]] = []
        self._held_out: list[tuple[bytes, tuple[str, int]]] = []
        self._held_since = 0.0
        self._thread = threading.Thread(target=self._run, name="fake-agg-switch", daemon=True)

    # --- control -------------------------------------------------------------------------------------------

    @property
    def counters(self) -> Counter[str]:
        """Event counts by name (module docstring); the pipeline's are read at each access."""
        drops = self._state.counters["drops"].packets
        stats = self._state.counters["job_stats"].packets
        for reason in DropReason:
            self._counters[reason.name.lower()] = int(drops[reason])
        for stat in JobStat:
            self._counters[stat.name.lower()] = int(stats[self.job_id * NUM_JOB_STATS + stat])
        return self._counters

    def register(self, addr: str, port: int, worker_id: int) -> int:
        """Admit a worker at (addr, port); returns its key."""
        self._addr_of[worker_id] = (addr, port)
        key = self.keys.setdefault(worker_id, self._key_rng.randrange(1, 1 << 32))
        workers = tuple(
            Worker(wid, a, p, ZERO_MAC, UDP_PORT_NUMBER, key=self.keys[wid])
            for wid, (a, p) in sorted(self._addr_of.items())
        )
        job = Job(self.job, self.job_id, self.num_workers, self.lanes, SlotRange(0, self.slots), self.epoch, workers)
        with self._lock:  # the job with one more worker replaces the installed one, as one step
            if self._installed is not None:
                self._write([-e for e in job_keys(self._installed)])
            self._write([+e for e in job_entries(job)])
            self._installed = job
        return key

    def _write(self, entities: Iterable[Entity]) -> None:
        """Write entities as the controller's P4Runtime writes would (encoded against the P4Info)."""
        updates = encode_updates(resolve_actions(entities, self._schema), self._schema)
        with self._state.lock:
            for update in updates:
                self._store.write(update)
            self._state.bump()

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
            switch=SwitchEndpoint(mac=SWITCH_MAC, addr=self.address[0], port=self.address[1]),
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

    def outgoing(self, datagram: bytes) -> bytes:
        """Each RESULT datagram the pipeline emits, before the egress faults: a subclass may change it."""
        return datagram

    # --- data path -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        buf = bytearray(1 << 16)
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
            self._counters["loss"] += 1
            return
        if imp.reorder and rng.random() < imp.reorder:
            held.append((data, addr))
            self._held_since = self._held_since or time.monotonic()
            self._counters["reordered"] += 1
            return
        deliver(data, addr)
        if imp.duplicate and rng.random() < imp.duplicate:
            self._counters["duplicated"] += 1
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
        self._counters["results_sent"] += 1

    def _process(self, data: bytes, src: tuple[str, int]) -> None:
        """One datagram through the pipeline, framed as UDP mode frames it; what it emits through the egress."""
        try:
            header = unpack_header(data)
        except WireError:
            pass  # the pipeline drops and counts it
        else:
            if header.msg_type == MsgType.UPDATE and self._first_copy.setdefault((src, header.tsi), data) != data:
                self._counters["retransmission_differs"] += 1
        n = len(data)
        frame = bytearray(AGG_OFFSET + n)
        frame[0:6] = self._agg_mac  # Ethernet: to the aggregation MAC, from 0, IPv4
        frame[12:14] = _ETHERTYPE_IPV4
        IPV4_UDP.pack_into(
            frame, ETH_HEADER_BYTES,
            0x45, 0, IPV4_HEADER_BYTES + UDP_HEADER_BYTES + n, 0, 0, 64, socket.IPPROTO_UDP, 0, self._ip(src[0]),
            self._agg_ip, src[1], AGG_UDP_PORT, UDP_HEADER_BYTES + n, 0,
        )  # fmt: skip
        frame[AGG_OFFSET:] = data
        with self._lock:
            outputs = self._pipeline.process(frame, UDP_PORT_NUMBER)
        for port, out in outputs:
            self._emit(port, out)

    def _emit(self, port: int, frame: bytes) -> None:
        """A frame the pipeline emitted leaves as UDP mode sends it: its datagram, to its IPv4/UDP destination."""
        if port != UDP_PORT_NUMBER or len(frame) < AGG_OFFSET or frame[12:14] != _ETHERTYPE_IPV4:
            self._counters["unroutable"] += 1
            return
        ip_udp = IPV4_UDP.unpack_from(frame, ETH_HEADER_BYTES)
        if ip_udp[0] != 0x45 or ip_udp[6] != socket.IPPROTO_UDP:
            self._counters["unroutable"] += 1
            return
        dst, dport, udp_length = ip_udp[9], ip_udp[11], ip_udp[12]
        datagram = frame[AGG_OFFSET : ETH_HEADER_BYTES + IPV4_HEADER_BYTES + udp_length]
        if _HEADER.unpack_from(datagram)[_FLAGS] & Flag.MISMATCH:
            self._counters["mismatch"] += 1
        host = self._names.get(dst)
        if host is None:
            host = self._names[dst] = socket.inet_ntoa(dst.to_bytes(4, "big"))
        self._impair(self.egress, self.outgoing(datagram), (host, dport), self._held_out, self._send)

    def _ip(self, host: str) -> int:
        addr = self._addresses.get(host)
        if addr is None:
            addr = self._addresses[host] = int.from_bytes(socket.inet_aton(host), "big")
        return addr


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
            "switch": {"mac": SWITCH_MAC, "addr": sw.address[0], "port": sw.address[1]},
        }
        return JoinResult.from_json(answer, job=job, rank=rank)

    def leave(self, job: str, rank: int) -> None:
        self.left.append(rank)

    def heartbeat(self, job: str, rank: int) -> None:
        if self.heartbeat_error is not None:
            raise self.heartbeat_error
        self.heartbeats[rank] += 1
