"""BML's schedule (``bml.schedule``) run over TCP between hosts, one socket per peer on each network card.

Each host has ``k`` cards, one per BCube level, each with its own address. For every level ``l`` the host keeps one
TCP connection to each of the ``n - 1`` other hosts of its level-``l`` group, bound to its level-``l`` address on
both ends, so the kernel routes it out of that card only. A synchronization then walks the ``2k`` stages: in each
stage the host sends and receives the pieces the schedule gives it, on all ``k`` cards at once (one non-blocking
event loop over every connection; on each card to one peer after the other), sums what it receives into its own
buffer (aggregation stages) or stores it (broadcast stages), and moves on when its own part of the stage is done.
Sums are integer additions, so the result is bit-exact: the same as ``bml.execute`` and the same on every host.
``allreduce_float`` sums float32 through that integer path (fixed point, the quantizer's block exponents).

Why TCP: within a level-``l`` group the traffic is host to host, as in a ring all-reduce (gloo's is TCP too), and
the switches only forward; TCP gives ordered, reliable, congestion-controlled streams without a retransmission
scheme of our own, which keeps the comparison with the ring about the schedule and not about two transports.

The framing, defined here once: a connection starts with ``HELLO`` from the lower-numbered host (it connects,
the higher-numbered one listens); every piece is a ``PIECE`` header, then the piece's bytes. The address plan
every host is given (``BmlPlan``, a JSON file) is defined here too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import selectors
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netagg.constants import MAX_LANES
from netagg.wire import EXP_MIN

from . import quantize as q
from .bml import BCube, Phase, Transfer, schedule

#: TCP port every card listens on (each card has its own address; one port for all).
BML_PORT = 29700
#: First four bytes of every HELLO and PIECE header: a peer that is not a BML host is refused at once.
MAGIC = b"BML1"
#: HELLO: magic, n, k, sender host, level, receiver host.
HELLO = struct.Struct("!4sIIIII")
#: PIECE: magic, stage, part, first element, end element (exclusive), bytes per element.
PIECE = struct.Struct("!4sIIQQI")
#: How long ``connect`` waits between tries while a peer is not listening yet.
CONNECT_RETRY_S = 0.05
#: Largest single send/recv call (bytes).
CHUNK = 1 << 20
#: Send buffer of every connection (SO_SNDBUF; the kernel doubles it). Autotuned, each connection may queue up
#: to megabytes in its card's qdisc; a shaped card (tbf holds 50 ms: 125 KB at 20 Mbit/s) drops what does not fit,
#: and each drop is a retransmission. Measured, one 1 MiB sync on BCube(9,1) at 20 Mbit/s: autotuned or 64 KiB,
#: 16 000-19 500 drops at the hosts' shapers; 16 KiB, none (and 1.4 s -> 1.0 s).
SEND_BUFFER = 16 * 1024
#: Elements per block (one shared exponent each) of ``allreduce_float``: the lanes of the switch path's largest
#: (and default) packet, so both paths quantize alike.
FLOAT_BLOCK = MAX_LANES
#: ``allreduce_float``'s exponent table: exponent - EXP_MIN in the low 8 bits, the non-finite flag above.
_EXP_LOWEST = EXP_MIN
_EXP_MASK = 0xFF
_NONFINITE_BIT = 8


class BmlError(RuntimeError):
    """A BML synchronization could not be set up or did not complete; the message names the host, peer and card."""


@dataclass(frozen=True)
class BmlPlan:
    """A BCube(n, k) and every host's card addresses (and interface names, where known): what each host is given.

    As JSON (the plan file): ``{"n": n, "k": k, "cards": [[{"address": A, "interface": I}, ...], ...]}``, one list
    per host with one entry per level; ``interface`` is optional.
    """

    cube: BCube
    addresses: tuple[tuple[str, ...], ...]  # [host][level] -> card address
    interfaces: tuple[tuple[str, ...], ...] | None = None  # [host][level] -> interface name

    def to_json(self) -> str:
        cards = [
            [
                {"interface": self.interfaces[h][lvl], "address": a} if self.interfaces else {"address": a}
                for lvl, a in enumerate(addrs)
            ]
            for h, addrs in enumerate(self.addresses)
        ]
        return json.dumps({"n": self.cube.n, "k": self.cube.k, "cards": cards})

    @classmethod
    def from_json(cls, text: str, source: str = "the BML plan") -> BmlPlan:
        """The plan in ``text``; ValueError naming ``source`` and what is wrong with it."""
        try:
            raw = json.loads(text)
            cube = BCube(int(raw["n"]), int(raw["k"]))
            hosts = raw["cards"]
            if not isinstance(hosts, list):
                raise TypeError("'cards' is not a list")
            if len(hosts) != cube.hosts:
                raise ValueError(f"BCube(n={cube.n}, k={cube.k}) has {cube.hosts} hosts; 'cards' lists {len(hosts)}")
            for h, cards in enumerate(hosts):
                if not isinstance(cards, list) or len(cards) != cube.k:
                    raise ValueError(f"host {h} needs {cube.k} cards (one per level), the plan gives {cards!r}")
            addresses = tuple(tuple(str(card["address"]) for card in cards) for cards in hosts)
            named = all("interface" in card for cards in hosts for card in cards)
            interfaces = tuple(tuple(str(c["interface"]) for c in cards) for cards in hosts) if named else None
        except (ValueError, TypeError, KeyError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{source} is not a BML plan: {what}") from None
        return cls(cube, addresses, interfaces)

    @classmethod
    def load(cls, path: str | Path) -> BmlPlan:
        """The plan in the JSON file ``path``; ValueError naming the file and what is wrong with it."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the BML plan {str(path)!r}: {exc.strerror or exc}") from None
        return cls.from_json(text, f"{str(path)!r}")


@dataclass
class _Outgoing:
    transfer: Transfer
    view: memoryview  # header + piece, sent from ``offset`` on
    offset: int = 0


@dataclass
class _Incoming:
    transfer: Transfer
    header: bytearray = field(default_factory=lambda: bytearray(PIECE.size))
    got_header: int = 0
    target: np.ndarray | None = None  # where the piece's bytes go (scratch for sums, the buffer for broadcasts)
    got: int = 0


class _Link:
    """One connection: a peer on one card, with what is queued on it in the current stage."""

    def __init__(self, sock: socket.socket, peer: int, level: int) -> None:
        self.sock = sock
        self.peer = peer
        self.level = level
        self.outgoing: deque[_Outgoing] = deque()
        self.incoming: deque[_Incoming] = deque()
        self.mask = 0

    def wanted(self) -> int:
        return (selectors.EVENT_WRITE if self.outgoing else 0) | (selectors.EVENT_READ if self.incoming else 0)


class BmlPeers:
    """One host's connections to its BCube peers, on every card; ``allreduce`` runs one synchronization."""

    def __init__(
        self,
        topo: BCube,
        host: int,
        addresses: Sequence[Sequence[str]],
        *,
        port: int = BML_PORT,
        timeout: float = 60.0,
    ) -> None:
        """``addresses[h][l]``: host ``h``'s level-``l`` card address, for every host of the BCube."""
        if not 0 <= host < topo.hosts:
            raise BmlError(f"host {host} is not in BCube(n={topo.n}, k={topo.k}) (hosts 0..{topo.hosts - 1})")
        if len(addresses) != topo.hosts:
            raise BmlError(
                f"BCube(n={topo.n}, k={topo.k}) has {topo.hosts} hosts; the address plan lists {len(addresses)}"
            )
        for h, cards in enumerate(addresses):
            if len(cards) != topo.k:
                raise BmlError(
                    f"host {h} has {len(cards)} card addresses in the plan; BCube(n={topo.n}, k={topo.k}) needs "
                    f"{topo.k}, one per level"
                )
        self.topo = topo
        self.host = host
        self.addresses = [list(cards) for cards in addresses]
        self.port = port
        self.timeout = timeout
        self.links: dict[tuple[int, int], _Link] = {}  # (level, peer) -> link
        #: (stage, level) -> (elements sent, elements received) by this host in the last ``allreduce``.
        self.traffic: dict[tuple[int, int], tuple[int, int]] = {}
        self._selector = selectors.DefaultSelector()
        self._schedules: dict[int, list[Transfer]] = {}
        self._queued: dict[int, deque[tuple[_Link, list[_Outgoing]]]] = {}
        self._pending: set[tuple[int, int]] = set()
        self._listeners: dict[int, socket.socket] = {}

    # -- setup ---------------------------------------------------------------------------------------------

    def listen(self) -> list[int]:
        """Listen on every card (at ``port``; 0: a free port each); the listening ports by level, for ``connect``."""
        if not self._listeners:
            try:
                for level in range(self.topo.k):
                    self._listeners[level] = self._listen(level)
            except BaseException:
                self._close_listeners()
                raise
        return [self._listeners[level].getsockname()[1] for level in range(self.topo.k)]

    def connect(self, ports: Sequence[Sequence[int]] | None = None) -> None:
        """Listen on every card, connect to higher-numbered peers, accept lower-numbered ones (one deadline).

        ``ports[h][l]``: the port host ``h`` listens on with its level-``l`` card (as its ``listen`` returned);
        by default every host's ``port``.
        """
        deadline = time.monotonic() + self.timeout
        try:
            self.listen()
            for level in range(self.topo.k):
                for peer in self.topo.group(self.host, level):
                    if peer > self.host:
                        port = ports[peer][level] if ports is not None else self.port
                        self._add(self._dial(level, peer, port, deadline), peer, level)
            for level, listener in self._listeners.items():
                expected = {p for p in self.topo.group(self.host, level) if p < self.host}
                while expected:
                    sock, peer = self._accept(listener, level, expected, deadline)
                    expected.discard(peer)
                    self._add(sock, peer, level)
        except BaseException:
            self.close()
            raise
        finally:
            self._close_listeners()

    def _close_listeners(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        self._listeners = {}

    def _listen(self, level: int) -> socket.socket:
        address = self.addresses[self.host][level]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)  # accepted sockets inherit it
        try:
            sock.bind((address, self.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL:
                raise BmlError(
                    f"host {self.host}: no interface has the level-{level} card address {address} "
                    "(is that card missing?)"
                ) from None
            raise BmlError(f"host {self.host}: cannot listen on {address}:{self.port} (level {level}): {exc}") from None
        sock.listen(self.topo.n * self.topo.k)
        return sock

    def _dial(self, level: int, peer: int, port: int, deadline: float) -> socket.socket:
        local, remote = self.addresses[self.host][level], self.addresses[peer][level]
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            try:
                sock.bind((local, 0))  # out of this card's address: the connection stays on this card
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect((remote, port))
                sock.settimeout(None)
                sock.sendall(HELLO.pack(MAGIC, self.topo.n, self.topo.k, self.host, level, peer))
                return sock
            except (ConnectionRefusedError, TimeoutError, OSError) as exc:
                sock.close()
                retry = isinstance(exc, ConnectionRefusedError) or exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH)
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise BmlError(
                        f"host {self.host}: no interface has the level-{level} card address {local} "
                        "(is that card missing?)"
                    ) from None
                if not retry or time.monotonic() + CONNECT_RETRY_S > deadline:
                    raise BmlError(
                        f"host {self.host}: cannot reach host {peer} at {remote}:{port} on the level-{level} "
                        f"card within {self.timeout:.0f} s: {exc}"
                    ) from None
            time.sleep(CONNECT_RETRY_S)  # the peer is not listening yet: try again until the deadline

    def _accept(
        self, listener: socket.socket, level: int, expected: set[int], deadline: float
    ) -> tuple[socket.socket, int]:
        listener.settimeout(max(0.0, deadline - time.monotonic()))
        try:
            sock, (addr, _) = listener.accept()
        except TimeoutError:
            raise BmlError(
                f"host {self.host}: hosts {sorted(expected)} did not connect on the level-{level} card within "
                f"{self.timeout:.0f} s"
            ) from None
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            hello = _recv_exactly(sock, HELLO.size)
            sock.settimeout(None)
        except (OSError, EOFError) as exc:
            sock.close()
            raise BmlError(f"host {self.host}: {addr} on the level-{level} card sent no hello: {exc}") from None
        magic, n, k, src, src_level, dst = HELLO.unpack(hello)
        problem = ""
        if magic != MAGIC:
            problem = "is not a BML host"
        elif (n, k) != (self.topo.n, self.topo.k):
            problem = f"runs BCube(n={n}, k={k}), this host BCube(n={self.topo.n}, k={self.topo.k})"
        elif dst != self.host or src_level != level:
            problem = f"meant host {dst} on level {src_level}"
        elif src not in expected:
            problem = f"says it is host {src}, not one of the expected {sorted(expected)}"
        if problem:
            sock.close()
            raise BmlError(f"host {self.host}: {addr} on the level-{level} card {problem}")
        return sock, src

    def _add(self, sock: socket.socket, peer: int, level: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.links[(level, peer)] = _Link(sock, peer, level)

    def close(self) -> None:
        self._close_listeners()
        for link in self.links.values():
            link.sock.close()
        self.links.clear()
        self._selector.close()
        self._selector = selectors.DefaultSelector()

    def __enter__(self) -> BmlPeers:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one synchronization -------------------------------------------------------------------------------

    def card_addresses(self) -> dict[int, set[str]]:
        """Level -> local addresses this host's connections on that level are bound to (one each)."""
        return {
            level: {link.sock.getsockname()[0] for (lvl, _), link in self.links.items() if lvl == level}
            for level in range(self.topo.k)
        }

    def allreduce(self, data: np.ndarray) -> np.ndarray:
        """Sum ``data`` (1-D, integer) over every host, in place; the same bits on every host. Returns ``data``."""
        if data.ndim != 1 or not data.flags.c_contiguous:
            raise BmlError(f"host {self.host}: BML syncs a contiguous 1-D array; got shape {data.shape}")
        if not np.issubdtype(data.dtype, np.integer):
            raise BmlError(f"host {self.host}: the exact path sums integers (fixed point); got dtype {data.dtype}")
        if len(self.links) != self.topo.k * (self.topo.n - 1):
            raise BmlError(f"host {self.host}: connect() first")
        transfers = self._schedules.get(data.size)
        if transfers is None:
            mine = [t for t in schedule(self.topo, data.size) if self.host in (t.src, t.dst)]
            transfers = self._schedules[data.size] = mine
        self.traffic = {}
        deadline = time.monotonic() + self.timeout
        for stage in range(2 * self.topo.k):
            self._run_stage(data, [t for t in transfers if t.stage == stage], stage, deadline)
        return data

    def allreduce_float(self, data: np.ndarray, lanes: int = FLOAT_BLOCK) -> np.ndarray:
        """Sum float32 ``data`` (1-D) over every host in place through fixed point; the same bits on every host.

        The quantizer's block floating point (docs/quantization.md), with ``lanes`` elements per block: the hosts
        agree on each block's exponent (the largest of theirs, so every host's lanes fit), quantize with it and
        the headroom for ``n**k`` hosts, sum the int32 lanes with ``allreduce`` (which therefore never wraps) and
        dequantize. A block that is non-finite on any host (inf, NaN, or too large) comes out NaN on every host.

        Agreeing costs one small synchronization first: the maximum of the hosts' values cannot travel through a
        sum, so every host puts its exponents and non-finite flags in its own slot of an array that is zero
        elsewhere, and the sum of that array is every host's table (each element has one non-zero term: exact).
        It carries 2 bytes per block per host (``hosts / (2 * lanes)`` of the gradient's bytes).
        """
        if data.dtype != np.float32 or data.ndim != 1 or not data.flags.c_contiguous:
            raise BmlError(
                f"host {self.host}: the fixed-point path syncs a contiguous 1-D float32 array; got {data.dtype} "
                f"of shape {data.shape}"
            )
        if lanes < 1:
            raise BmlError(f"host {self.host}: {lanes} lanes per block; at least 1")
        count, hosts = data.size, self.topo.hosts
        blocks_count = -(-count // lanes)
        blocks = np.zeros(blocks_count * lanes, np.float32)
        blocks[:count] = data
        blocks = blocks.reshape(blocks_count, lanes)
        own = q.block_exponents(blocks)
        table = np.zeros((hosts, blocks_count), np.uint16)
        table[self.host] = (own[0].astype(np.int16) - _EXP_LOWEST) | (own[1].astype(np.uint16) << _NONFINITE_BIT)
        self.allreduce(table.reshape(-1))
        shared = ((table & _EXP_MASK).astype(np.int16) + _EXP_LOWEST).max(axis=0).astype(np.int8)
        nonfinite = (table >> _NONFINITE_BIT).any(axis=0)
        sums = q.quantize(blocks, shared, hosts, own=own)
        self.allreduce(sums.reshape(-1))
        data[:] = q.dequantize(sums, shared, hosts, nonfinite).reshape(-1)[:count]
        return data

    def _run_stage(self, data: np.ndarray, transfers: list[Transfer], stage: int, deadline: float) -> None:
        raw = memoryview(data).cast("B")
        itemsize = data.dtype.itemsize
        for level in range(self.topo.k):
            self.traffic[(stage, level)] = (0, 0)
        sends: dict[int, list[tuple[int, _Link, list[_Outgoing]]]] = {level: [] for level in range(self.topo.k)}
        for t in transfers:
            if t.src == self.host:
                link = self.links[(t.level, t.dst)]
                header = PIECE.pack(MAGIC, t.stage, t.part, t.start, t.stop, itemsize)
                # The piece is sent from the buffer itself: nothing writes to it while the stage runs (pieces of
                # one stage are disjoint from the ranges it sums into or stores).
                body = raw[t.start * itemsize : t.stop * itemsize]
                ahead = (self.topo.digit(t.dst, t.level) - self.topo.digit(self.host, t.level)) % self.topo.n
                sends[t.level].append((ahead, link, [_Outgoing(t, memoryview(header)), _Outgoing(t, body)]))
                sent, got = self.traffic[(stage, t.level)]
                self.traffic[(stage, t.level)] = (sent + t.size, got)
            else:
                target = data[t.start : t.stop] if t.phase is Phase.BROADCAST else np.empty(t.size, data.dtype)
                self.links[(t.level, t.src)].incoming.append(_Incoming(t, target=target))
                sent, got = self.traffic[(stage, t.level)]
                self.traffic[(stage, t.level)] = (sent, got + t.size)
        # Pairwise exchange: each card sends to one peer at a time, first the one a digit ahead, then two..., so
        # each card has about one flow out and one in at a time rather than n - 1 peers sending at once into one
        # switch port's queue.
        self._queued = {
            level: deque((link, items) for _, link, items in sorted(queue, key=lambda q: q[0]))
            for level, queue in sends.items()
        }
        pending = self._pending = {key for key, link in self.links.items() if link.incoming}
        for level in range(self.topo.k):
            self._next_send(level)
        while pending:
            for key in list(pending):
                link = self.links[key]
                wanted = link.wanted()
                if wanted != link.mask:
                    if link.mask and wanted:
                        self._selector.modify(link.sock, wanted, link)
                    elif wanted:
                        self._selector.register(link.sock, wanted, link)
                    else:
                        self._selector.unregister(link.sock)
                    link.mask = wanted
                if not wanted:
                    pending.discard(key)
            if not pending:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = sorted(f"host {lk.peer} (level {lk.level})" for lk in (self.links[k] for k in pending))
                raise BmlError(
                    f"host {self.host}: stage {stage} of {2 * self.topo.k} not done within {self.timeout:.0f} s; "
                    f"still exchanging with {', '.join(waiting)}"
                )
            for key, events in self._selector.select(min(left, 1.0)):
                link: _Link = key.data
                if events & selectors.EVENT_WRITE and link.outgoing:
                    self._send(link)
                if events & selectors.EVENT_READ and link.incoming:
                    self._receive(link, data, stage)

    def _send(self, link: _Link) -> None:
        out = link.outgoing[0]
        try:
            sent = link.sock.send(out.view[out.offset : out.offset + CHUNK])
        except BlockingIOError:
            return
        except OSError as exc:
            raise BmlError(
                f"host {self.host}: sending to host {link.peer} on the level-{link.level} card failed: {exc}"
            ) from None
        out.offset += sent
        if out.offset == len(out.view):
            link.outgoing.popleft()
            if not link.outgoing:
                self._next_send(link.level)

    def _next_send(self, level: int) -> None:
        """Hand the next queued piece of ``level`` to its link (one link per card sends at a time)."""
        queue = self._queued[level]
        if queue:
            link, items = queue.popleft()
            link.outgoing.extend(items)
            self._pending.add((link.level, link.peer))

    def _receive(self, link: _Link, data: np.ndarray, stage: int) -> None:
        inc = link.incoming[0]
        try:
            if inc.got_header < PIECE.size:
                got = link.sock.recv_into(memoryview(inc.header)[inc.got_header :])
                if got:
                    inc.got_header += got
                    if inc.got_header == PIECE.size:
                        self._check_header(link, inc, data.dtype.itemsize)
            else:
                assert inc.target is not None
                body = memoryview(inc.target).cast("B")
                got = link.sock.recv_into(body[inc.got : inc.got + CHUNK])
                inc.got += got
        except BlockingIOError:
            return
        except OSError as exc:
            raise BmlError(
                f"host {self.host}: receiving from host {link.peer} on the level-{link.level} card failed: {exc}"
            ) from None
        if not got:
            raise BmlError(
                f"host {self.host}: host {link.peer} closed the level-{link.level} connection in stage {stage}"
            )
        t = inc.transfer
        if inc.got_header == PIECE.size and inc.got == t.size * data.dtype.itemsize:
            link.incoming.popleft()
            if t.phase is Phase.AGGREGATE:
                with np.errstate(over="ignore"):
                    data[t.start : t.stop] += inc.target

    def _check_header(self, link: _Link, inc: _Incoming, itemsize: int) -> None:
        magic, stage, part, start, stop, size = PIECE.unpack(inc.header)
        t = inc.transfer
        if (magic, stage, part, start, stop, size) != (MAGIC, t.stage, t.part, t.start, t.stop, itemsize):
            raise BmlError(
                f"host {self.host}: host {link.peer} sent stage {stage} part {part} elements [{start}, {stop}) of "
                f"{size}-byte integers on the level-{link.level} card; the schedule expects stage {t.stage} part "
                f"{t.part} [{t.start}, {t.stop}) of {itemsize}-byte integers (do all hosts sync the same size and "
                "type?)"
            )

    def barrier(self) -> None:
        """Return once every host has reached its ``barrier`` (a synchronization in which every piece is one
        element: each host's result depends on every host's contribution)."""
        ones = np.ones(self.topo.k * self.topo.hosts, dtype=np.int32)
        self.allreduce(ones)
        if not (ones == self.topo.hosts).all():
            raise BmlError(f"host {self.host}: the barrier's sum is wrong ({ones.tolist()[:4]}...)")

    def drain(self) -> None:
        """Wait until every byte this host sent has been acknowledged by its peers (the cards are idle)."""
        deadline = time.monotonic() + self.timeout
        buf = bytearray(4)
        for link in self.links.values():
            while True:
                fcntl.ioctl(link.sock.fileno(), termios.TIOCOUTQ, buf)
                if int.from_bytes(buf, "little") == 0:
                    break
                if time.monotonic() > deadline:
                    raise BmlError(
                        f"host {self.host}: data to host {link.peer} (level {link.level}) still unacknowledged "
                        f"after {self.timeout:.0f} s"
                    )
                time.sleep(0.001)  # no event reports an acknowledged send queue: poll it with a deadline


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)
