"""Packet I/O of the software switch: raw Ethernet ports (AF_PACKET) or one UDP endpoint.

Both kinds expose the same small interface to the switch loop (``PortIO``): the file descriptors to poll,
``receive(fd, handler)`` that drains one socket and hands each frame to the pipeline, ``send(port, frame)``, and
``flush()``, which the loop calls after each batch to transmit what ``send()`` may have queued.

``AfPacketPorts`` binds one raw socket per ``PORT@IFACE``, like simple_switch_grpc's ``-i``. With ``tx_ring=True``
each port also gets a transmit-only socket with a PACKET_TX_RING: ``send()`` then only queues a frame in the ring
and ``flush()``, which the switch loop calls once per batch of received frames, transmits everything queued with
one system call. It is off by default: on the machines measured so far, filling a ring frame from Python cost
more than the send call it saves (docs/softswitch.md, "Performance design").

``UdpPorts`` makes the switch a UDP endpoint so that workers on one machine need neither root nor interfaces:
each datagram is wrapped in synthesized Ethernet/IPv4/UDP headers as if it had arrived on switch port
``UDP_PORT_NUMBER`` from its sender, and RESULT frames leaving on that port are sent back with ``sendto()``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Self

from netagg.constants import AGG_UDP_PORT, PORT_BITS
from netagg.wire import AGG_OFFSET, ETH_HEADER_BYTES, IPV4_HEADER_BYTES, UDP_HEADER_BYTES

from .pipeline import OutBurst

log = logging.getLogger(__name__)

#: Called with each received frame (valid only during the call) and its ingress port.
FrameHandler = Callable[[memoryview, int], None]

ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_ADD_MEMBERSHIP: Final = 1
PACKET_MR_PROMISC: Final = 1
#: Linux >= 4.20: do not deliver frames this host sends out of the interface (our own transmissions).
PACKET_IGNORE_OUTGOING: Final = 23
#: sll_pkttype of frames the host transmitted (the fallback filter when PACKET_IGNORE_OUTGOING is missing).
PACKET_OUTGOING: Final = 4
PACKET_RX_RING: Final = 5
PACKET_VERSION: Final = 10
PACKET_TX_RING: Final = 13
#: Frames of the transmit ring the kernel finds malformed are skipped instead of stopping the ring.
PACKET_LOSS: Final = 14
#: Each transmit ring frame starts with a struct virtio_net_hdr (see ``TxRing``).
PACKET_VNET_HDR: Final = 15
TPACKET_V2: Final = 1
#: tp_status bit: the frame belongs to user space (filled by the kernel, not yet handed back).
TP_STATUS_USER: Final = 1
#: Transmit ring tp_status values: free for user space; queued by user space for the next flush.
TP_STATUS_AVAILABLE: Final = 0
TP_STATUS_SEND_REQUEST: Final = 1
SIOCGIFMTU: Final = 0x8921
#: struct tpacket2_hdr up to tp_mac: tp_status, tp_len, tp_snaplen, tp_mac.
_TPACKET2 = struct.Struct("IIIH")
#: Offset of sockaddr_ll's sll_pkttype in a TPACKET_V2 frame (after the 32-byte header, at +10).
_TPACKET2_PKTTYPE: Final = 32 + 10
#: Ring bytes per port; with 2 KiB frames (MTU 1500) that is 2048 frames of backlog.
RX_RING_BYTES: Final = 4 << 20
#: Ring frame bytes beyond the Ethernet frame: tpacket2 header, sockaddr_ll, alignment, a VLAN tag.
_RING_FRAME_OVERHEAD: Final = 128
#: Transmit ring bytes per port: 512 frames of 2 KiB, more than one receive batch can queue on a port.
TX_RING_BYTES: Final = 1 << 20
#: Where a transmit ring frame's data starts (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)).
_TX_DATA_OFFSET: Final = 32
#: struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (no offloads).
_VNET_HDR = struct.Struct("=BBHHHH")
#: Offset of the virtio_net_hdr's hdr_len in a transmit ring frame, in 16-bit words.
_TX_HDR_LEN_HALF: Final = (_TX_DATA_OFFSET + 2) // 2
_TX_FRAME_AT: Final = _TX_DATA_OFFSET + _VNET_HDR.size

#: The switch port number UDP-mode datagrams arrive on and RESULTs must leave by.
UDP_PORT_NUMBER: Final = 1
#: Address ``--udp`` binds when given no HOST:PORT.
DEFAULT_UDP_ADDRESS: Final = ("127.0.0.1", AGG_UDP_PORT)

#: Largest frame read from a socket (GRO can hand raw sockets frames above the MTU; they are still read whole).
RECV_BUFFER_BYTES: Final = 65536 + AGG_OFFSET
#: Frames drained from one socket before the loop looks at the others (fairness between ports).
RECV_BUDGET: Final = 64
SOCKET_BUFFER_BYTES: Final = 4 << 20

_IPV4_UDP = struct.Struct("!BBHHHBBHII" + "HHHH")
_MAX_PORT: Final = (1 << PORT_BITS) - 1


class PortError(OSError):
    """A port could not be opened or configured (names the port and the interface or address)."""


@dataclass
class PortStats:
    """Frames the I/O layer moved or lost (the pipeline's own drops are in its counters)."""

    rx: int = 0
    tx: int = 0
    #: Frames for a port that does not exist (or, in UDP mode, that cannot be sent as a datagram).
    tx_unroutable: int = 0
    #: Sends the kernel refused (full buffers, frame too big, no route).
    tx_errors: int = 0
    #: Frames sent with a send call of their own because the transmit ring was still full after a flush.
    tx_fallback: int = 0


class PortIO:
    """The interface the switch loop drives; subclasses own the sockets."""

    def __init__(self) -> None:
        self.stats = PortStats()

    def fds(self) -> list[int]:
        """File descriptors to poll for input."""
        raise NotImplementedError

    def receive(self, fd: int, handler: FrameHandler, budget: int = RECV_BUDGET) -> int:
        """Read up to ``budget`` frames from ``fd`` without blocking; return how many were handled."""
        raise NotImplementedError

    def send(self, port: int, frame: bytes) -> None:
        """Transmit ``frame`` on switch port ``port`` (or queue it until ``flush()``); failures are counted."""
        raise NotImplementedError

    def flush(self) -> None:
        """Transmit the frames ``send()`` queued, in order; ports that send at once need not override it."""

    def send_burst(self, out: OutBurst) -> None:
        """Transmit every frame of ``out`` (then its ``oversize`` frames), in order."""
        view = out.view
        send = self.send
        for offset, length, port in out.meta[: out.count].tolist():
            send(port, bytes(view[offset : offset + length]))
        for port, frame in out.oversize:
            send(port, frame)

    def describe(self) -> str:
        """One line for the readiness message."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_port_spec(spec: str) -> tuple[int, str]:
    """``PORT@IFACE`` -> (port, iface), with a clear error for anything else."""
    port_text, sep, iface = spec.partition("@")
    if not sep or not iface or not port_text.isdigit():
        raise ValueError(f"interface {spec!r} must be PORT@IFACE, e.g. 1@veth0")
    port = int(port_text)
    if not 0 <= port <= _MAX_PORT:
        raise ValueError(f"port {port} in {spec!r} does not fit in {PORT_BITS} bits (0..{_MAX_PORT})")
    if len(iface) > 15:
        raise ValueError(f"interface name {iface!r} in {spec!r} is longer than 15 bytes")
    return port, iface


class RxRing:
    """A socket's PACKET_RX_RING (TPACKET_V2): the kernel writes frames into shared memory and the switch reads
    them there, without a system call per frame (the socket is still polled to wait for the first one)."""

    def __init__(self, sock: socket.socket, max_frame: int, filter_outgoing: bool) -> None:
        """Set up the ring on ``sock`` before it is bound; ``max_frame`` is the largest frame it must hold."""
        frame_size = 2048
        while frame_size < max_frame + _RING_FRAME_OVERHEAD:
            frame_size *= 2
        block_size = max(frame_size, mmap.PAGESIZE, 1 << 16)
        block_nr = max(1, RX_RING_BYTES // block_size)
        self.frame_size = frame_size
        self.frame_nr = block_nr * (block_size // frame_size)
        self.filter_outgoing = filter_outgoing
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        request = struct.pack("IIII", block_size, block_nr, frame_size, self.frame_nr)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
        self._map = mmap.mmap(
            sock.fileno(), block_size * block_nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._view = memoryview(self._map)
        self._status = self._view.cast("I")  # tp_status of frame i is word i * frame_size / 4
        self._next = 0
        #: Frames larger than a ring frame (only with GRO/LRO on the interface): dropped.
        self.truncated = 0

    def receive(self, port: int, handler: FrameHandler, budget: int) -> int:
        """Hand up to ``budget`` ready frames to ``handler``, returning each frame to the kernel after it."""
        ring = self._map
        view = self._view
        status = self._status
        frame_size = self.frame_size
        last = self.frame_nr - 1
        unpack = _TPACKET2.unpack_from
        i = self._next
        handled = 0
        while handled < budget:
            offset = i * frame_size
            word = offset >> 2
            if not status[word] & TP_STATUS_USER:
                break
            try:
                _, length, snaplen, mac = unpack(ring, offset)
                if snaplen != length:
                    self.truncated += 1
                    if self.truncated == 1:
                        log.warning(
                            "port %d: a %d-byte frame does not fit the receive ring (%d bytes a frame); "
                            "turn GRO/LRO off on the interface",
                            port,
                            length,
                            frame_size,
                        )
                elif not (self.filter_outgoing and ring[offset + _TPACKET2_PKTTYPE] == PACKET_OUTGOING):
                    handled += 1
                    handler(view[offset + mac : offset + mac + snaplen], port)
            finally:
                status[word] = 0  # TP_STATUS_KERNEL: the kernel may fill the frame again
            i = i + 1 if i < last else 0
        self._next = i
        return handled

    def close(self) -> None:
        self._status.release()
        self._view.release()
        self._map.close()


class TxRing:
    """A transmit-only socket with a PACKET_TX_RING (TPACKET_V2) on one interface.

    ``put()`` copies a frame into the next ring frame and marks it for sending; ``flush()`` hands every marked
    frame to the kernel with one ``send()``. The kernel walks the ring in order from its own position, so frames
    are filled strictly in ring order and a frame that could not go is taken back at once (ring and kernel
    then agree again on where the next frame goes).

    Each ring frame starts with a virtio_net_hdr whose ``hdr_len`` is the whole frame: the kernel then copies
    the frame into the packet instead of pointing the packet at the ring's pages. Without it a ring frame could
    be reused while a receiver down the line (a socket that queued the packet, a tap) still reads from it.

    The socket is bound with protocol 0, so it receives nothing; the port's receive socket is separate.
    """

    def __init__(self, iface: str, max_frame: int) -> None:
        """Open the socket and its ring on ``iface``; ``max_frame`` is the largest Ethernet frame it takes."""
        frame_size = 2048
        while frame_size < max_frame + _TX_FRAME_AT:
            frame_size *= 2
        block_size = max(frame_size, mmap.PAGESIZE)
        block_nr = max(1, TX_RING_BYTES // block_size)
        self.frame_size = frame_size
        self.frame_nr = block_nr * (block_size // frame_size)
        self.max_frame = max_frame
        self._map: mmap.mmap | None = None
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            self._sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            request = struct.pack("IIII", block_size, block_nr, frame_size, self.frame_nr)
            self._sock.setsockopt(SOL_PACKET, PACKET_TX_RING, request)
            self._map = mmap.mmap(
                self._sock.fileno(), block_size * block_nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._sock.bind((iface, 0))
            self._sock.setblocking(False)
        except BaseException:
            if self._map is not None:
                self._map.close()
            self._sock.close()
            raise
        self._view = memoryview(self._map)
        self._words = self._view.cast("I")  # tp_status of frame i is word i * frame_size / 4, tp_len the next
        self._halves = self._view.cast("H")  # for the virtio_net_hdr's hdr_len
        empty = _VNET_HDR.pack(0, 0, 0, 0, 0, 0)  # no checksum offload, no GSO
        for i in range(self.frame_nr):
            self._map[i * frame_size + _TX_DATA_OFFSET : i * frame_size + _TX_FRAME_AT] = empty
        # Where each ring frame's Ethernet frame goes (one slice each, made once: slicing costs per frame).
        self._slots = [
            self._view[i * frame_size + _TX_FRAME_AT : (i + 1) * frame_size] for i in range(self.frame_nr)
        ]
        self._frame_words = frame_size >> 2
        self._last = self.frame_nr - 1
        self._head = 0  # the next frame to fill
        self._queued = 0  # frames filled since the last flush (the oldest is _queued frames before _head)

    def put(self, frame: bytes) -> bool:
        """Queue ``frame`` in the next ring frame; False if that frame is still in the kernel's hands."""
        i = self._head
        words = self._words
        word = i * self._frame_words
        if words[word] != TP_STATUS_AVAILABLE:
            return False
        n = len(frame)
        self._slots[i][:n] = frame
        self._halves[(word << 1) + _TX_HDR_LEN_HALF] = n
        words[word + 1] = _VNET_HDR.size + n  # tp_len
        words[word] = TP_STATUS_SEND_REQUEST  # last: from here on the frame belongs to the kernel
        self._head = i + 1 if i != self._last else 0
        self._queued += 1
        return True

    def pending(self) -> bool:
        return self._queued != 0

    def flush(self) -> tuple[int, int]:
        """Transmit the queued frames; (frames sent, frames dropped because the kernel refused them)."""
        queued = self._queued
        if not queued:
            return 0, 0
        try:
            self._sock.send(b"", socket.MSG_DONTWAIT)
            error = None
        except OSError as exc:  # e.g. ENOBUFS, ENETDOWN: the frames not taken are dropped below
            error = exc
        words = self._words
        frame_words = self.frame_size >> 2
        last = self.frame_nr - 1
        i = (self._head - queued) % self.frame_nr
        sent = 0
        while sent < queued and words[i * frame_words] != TP_STATUS_SEND_REQUEST:
            sent += 1
            i = i + 1 if i < last else 0
        # The kernel stops at the first frame it could not send (full socket buffer, a send error) and leaves it
        # and all after it queued; take them back so the next put() fills the frame the kernel looks at next.
        self._head = i
        self._queued = 0
        dropped = queued - sent
        for _ in range(dropped):
            words[i * frame_words] = TP_STATUS_AVAILABLE
            i = i + 1 if i < last else 0
        if dropped and error is not None and error.errno not in (errno.EAGAIN, errno.ENOBUFS):
            log.debug("transmit ring flush failed (%d frames dropped): %s", dropped, error)
        return sent, dropped

    def close(self) -> None:
        for slot in self._slots:
            slot.release()
        self._halves.release()
        self._words.release()
        self._view.release()
        if self._map is not None:
            self._map.close()
        self._sock.close()


class AfPacketPorts(PortIO):
    """One raw AF_PACKET socket per switch port, bound to its interface.

    ``tx_ring``: transmit through a PACKET_TX_RING per port where the kernel grants one (see the module's notes).
    """

    def __init__(self, interfaces: dict[int, str], tx_ring: bool = False) -> None:
        super().__init__()
        if not interfaces:
            raise ValueError("no interfaces given")
        ifaces = list(interfaces.values())
        duplicates = {i for i in ifaces if ifaces.count(i) > 1}
        if duplicates:
            raise ValueError(f"interfaces bound to more than one port: {sorted(duplicates)}")
        self.interfaces = dict(interfaces)
        self._sockets: dict[int, socket.socket] = {}
        self._port_of_fd: dict[int, int] = {}
        self._filter_outgoing: dict[int, bool] = {}
        self._rings: dict[int, RxRing] = {}
        self._tx_rings: dict[int, TxRing] = {}
        self._want_tx_ring = tx_ring
        #: The bound send() of each port's socket, looked up once (the per-frame path is a dict index and a call).
        self._send_of: dict[int, Callable[[bytes], int]] = {}
        self._buffer = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        try:
            for port, iface in sorted(self.interfaces.items()):
                self._open(port, iface)
        except BaseException:
            self.close()
            raise
        # The switch loop looks ``send`` up once: choose the path here instead of testing for rings per frame.
        self.send = self._queue if self._tx_rings else self._send_now  # type: ignore[method-assign]

    def _open(self, port: int, iface: str) -> None:
        try:
            # Protocol 0 until bound: a socket created with ETH_P_ALL would see every interface's traffic
            # in the window before bind().
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise PortError(exc.errno, f"port {port}@{iface}: raw sockets need root or CAP_NET_RAW") from None
        ring = None
        tx_ring = None
        try:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                filter_outgoing = False
            except OSError:  # kernel older than 4.20: filter by packet type on receive instead
                filter_outgoing = True
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            mtu = self._mtu(sock, iface)
            ring = self._open_ring(sock, port, iface, mtu, filter_outgoing)
            sock.bind((iface, ETH_P_ALL))
            # Promiscuous for as long as the socket lives: a switch port receives frames for any MAC.
            ifindex = socket.if_nametoindex(iface)
            sock.setsockopt(
                SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            )
            sock.setblocking(False)
            if self._want_tx_ring:
                tx_ring = self._open_tx_ring(port, iface, mtu)
        except OSError as exc:
            if ring is not None:
                ring.close()
            if tx_ring is not None:
                tx_ring.close()
            sock.close()
            raise PortError(exc.errno, f"port {port}@{iface}: {exc.strerror or exc}") from None
        self._sockets[port] = sock
        self._send_of[port] = sock.send
        self._port_of_fd[sock.fileno()] = port
        self._filter_outgoing[sock.fileno()] = filter_outgoing
        if ring is not None:
            self._rings[sock.fileno()] = ring
        if tx_ring is not None:
            self._tx_rings[port] = tx_ring

    @staticmethod
    def _mtu(sock: socket.socket, iface: str) -> int:
        """The MTU as the socket's namespace sees it (raises for an interface that does not exist)."""
        request = struct.pack("16si12x", iface.encode(), 0)
        return struct.unpack_from("16si", fcntl.ioctl(sock.fileno(), SIOCGIFMTU, request))[1]

    @staticmethod
    def _open_ring(sock: socket.socket, port: int, iface: str, mtu: int, filter_outgoing: bool) -> RxRing | None:
        """A receive ring sized for the interface's MTU, or None (plain receives) if the kernel refuses one."""
        try:
            return RxRing(sock, mtu + ETH_HEADER_BYTES, filter_outgoing)
        except (OSError, ValueError) as exc:
            log.warning("port %d@%s: no receive ring (%s); receiving frame by frame", port, iface, exc)
            return None

    @staticmethod
    def _open_tx_ring(port: int, iface: str, mtu: int) -> TxRing | None:
        """A transmit ring for frames up to the MTU, or None (a send call per frame) if the kernel refuses one."""
        try:
            return TxRing(iface, mtu + ETH_HEADER_BYTES)
        except (OSError, ValueError) as exc:
            log.warning("port %d@%s: no transmit ring (%s); sending frame by frame", port, iface, exc)
            return None

    def fds(self) -> list[int]:
        return list(self._port_of_fd)

    def ring_ports(self) -> list[int]:
        """Ports served by a receive ring (the others receive frame by frame)."""
        return sorted(self._port_of_fd[fd] for fd in self._rings)

    def tx_ring_ports(self) -> list[int]:
        """Ports served by a transmit ring (the others send frame by frame)."""
        return sorted(self._tx_rings)

    def receive(self, fd: int, handler: FrameHandler, budget: int = RECV_BUDGET) -> int:
        port = self._port_of_fd[fd]
        ring = self._rings.get(fd)
        if ring is not None:
            handled = ring.receive(port, handler, budget)
            if not handled:
                # Woken with an empty ring: a socket error (ENETDOWN after a link flap) wakes poll until it is
                # read, and nothing else reads it on a port that sends nothing or sends through its ring.
                error = self._sockets[port].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    log.debug("port %d: %s", port, os.strerror(error))
            self.stats.rx += handled
            return handled
        sock = self._sockets[port]
        view = self._view
        if self._filter_outgoing[fd]:
            return self._receive_filtered(sock, port, handler, budget)
        handled = 0
        recv_into = sock.recv_into
        while handled < budget:
            try:
                n = recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ENETDOWN while the interface flaps: nothing to read now
                log.debug("port %d: receive failed: %s", port, exc)
                break
            handled += 1
            handler(view[:n], port)
        self.stats.rx += handled
        return handled

    def _receive_filtered(self, sock: socket.socket, port: int, handler: FrameHandler, budget: int) -> int:
        handled = 0
        while handled < budget:
            try:
                n, address = sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("port %d: receive failed: %s", port, exc)
                break
            if address[2] == PACKET_OUTGOING:
                continue
            handled += 1
            handler(self._view[:n], port)
        self.stats.rx += handled
        return handled

    def send(self, port: int, frame: bytes) -> None:
        (self._queue if self._tx_rings else self._send_now)(port, frame)  # replaced per instance in __init__

    def _queue(self, port: int, frame: bytes) -> None:
        """``send()`` with transmit rings: queue in the port's ring (or send at once, in order, if it cannot)."""
        ring = self._tx_rings.get(port)
        if ring is not None:
            if ETH_HEADER_BYTES <= len(frame) <= ring.max_frame:
                if ring.put(frame):
                    return
                self._flush_ring(ring)  # full: what the kernel has sent since the last flush is free again
                if ring.put(frame):
                    return
                # Still full (the kernel holds every ring frame): send this one alone. The ring was just
                # flushed, so it still leaves after every frame queued before it.
                self.stats.tx_fallback += 1
            else:
                # A frame the ring does not take (the kernel would drop it silently there): the send call
                # reports why, and the ring is flushed first to keep the order.
                self._flush_ring(ring)
        self._send_now(port, frame)

    def flush(self) -> None:
        for ring in self._tx_rings.values():
            if ring.pending():
                self._flush_ring(ring)

    def _flush_ring(self, ring: TxRing) -> None:
        sent, dropped = ring.flush()
        self.stats.tx += sent
        self.stats.tx_errors += dropped

    def _send_now(self, port: int, frame: bytes) -> None:
        """One send call on the port's receive socket (which has no transmit ring)."""
        try:
            self._send_of[port](frame)
        except KeyError:
            self.stats.tx_unroutable += 1
            return
        except OSError as exc:
            self.stats.tx_errors += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("port %d: send of %d bytes failed: %s", port, len(frame), exc)
            return
        self.stats.tx += 1

    def describe(self) -> str:
        return "ports " + ", ".join(f"{p}@{i}" for p, i in sorted(self.interfaces.items()))

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        for tx_ring in self._tx_rings.values():
            tx_ring.close()
        self._tx_rings.clear()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._send_of.clear()
        self._port_of_fd.clear()


def parse_udp_address(text: str | None) -> tuple[str, int]:
    """``HOST:PORT`` (or None for the default) -> (IPv4 address, port)."""
    if text is None or text == "":
        return DEFAULT_UDP_ADDRESS
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"UDP address {text!r} must be HOST:PORT (port 0: any free port)")
    try:
        host = socket.gethostbyname(host or "0.0.0.0")
    except OSError as exc:
        raise ValueError(f"UDP address {text!r}: cannot resolve {host!r}: {exc}") from None
    return host, int(port_text)


#: Returns the switch's aggregation (MAC, IPv4) as the pipeline knows it, or None before it is configured.
AddressSource = Callable[[], "tuple[bytes, int] | None"]


class UdpPorts(PortIO):
    """The switch as a UDP endpoint: port ``UDP_PORT_NUMBER`` is the socket; no other port exists."""

    def __init__(self, address: tuple[str, int], agg_address: AddressSource) -> None:
        super().__init__()
        self._agg_address = agg_address
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            self._sock.bind(address)
            self._sock.setblocking(False)
        except OSError as exc:
            self._sock.close()
            raise PortError(exc.errno, f"UDP {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self.address: tuple[str, int] = self._sock.getsockname()
        self._buffer = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._payload = self._view[AGG_OFFSET:]
        # Synthesized headers: EtherType IPv4, IPv4 without options (TTL 64, UDP), UDP checksum 0. The
        # pipeline never verifies checksums, so the IPv4 checksum of these headers is left 0.
        self._buffer[12:14] = b"\x08\x00"
        self._addresses: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._current_agg: tuple[bytes, int] | None = None
        self._set_destination((bytes(6), 0))

    def _set_destination(self, agg: tuple[bytes, int]) -> None:
        self._current_agg = agg
        self._buffer[0:6] = agg[0]

    def fds(self) -> list[int]:
        return [self._sock.fileno()]

    def receive(self, fd: int, handler: FrameHandler, budget: int = RECV_BUDGET) -> int:
        buffer = self._buffer
        view = self._view
        payload = self._payload
        pack_into = _IPV4_UDP.pack_into
        addresses = self._addresses
        recvfrom_into = self._sock.recvfrom_into
        agg = self._agg_address() or (bytes(6), 0)
        if agg != self._current_agg:
            self._set_destination(agg)
        agg_ip = agg[1]
        handled = 0
        while handled < budget:
            try:
                n, (host, sport) = recvfrom_into(payload)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an earlier send's ICMP error: serve on next poll
                log.debug("UDP receive failed: %s", exc)
                break
            src = addresses.get(host)
            if src is None:
                src = addresses[host] = int.from_bytes(socket.inet_aton(host), "big")
            pack_into(
                buffer, ETH_HEADER_BYTES,
                0x45, 0, IPV4_HEADER_BYTES + UDP_HEADER_BYTES + n, 0, 0, 64, socket.IPPROTO_UDP, 0, src, agg_ip,
                sport, AGG_UDP_PORT, UDP_HEADER_BYTES + n, 0,
            )  # fmt: skip
            handled += 1
            handler(view[: AGG_OFFSET + n], UDP_PORT_NUMBER)
        self.stats.rx += handled
        return handled

    def send(self, port: int, frame: bytes) -> None:
        if (
            port != UDP_PORT_NUMBER
            or len(frame) < AGG_OFFSET
            or frame[12:14] != b"\x08\x00"
            or frame[14] != 0x45
            or frame[23] != socket.IPPROTO_UDP
        ):
            self.stats.tx_unroutable += 1
            return
        dst = int.from_bytes(frame[30:34], "big")
        dport, udp_length = struct.unpack_from("!2xHH", frame, 34)
        host = self._names.get(dst)
        if host is None:
            host = self._names[dst] = socket.inet_ntoa(frame[30:34])
        try:
            datagram = memoryview(frame)[AGG_OFFSET : ETH_HEADER_BYTES + IPV4_HEADER_BYTES + udp_length]
            self._sock.sendto(datagram, (host, dport))
        except OSError as exc:
            self.stats.tx_errors += 1
            log.debug("UDP send to %s:%d failed: %s", host, dport, exc)
            return
        self.stats.tx += 1

    def describe(self) -> str:
        return f"UDP {self.address[0]}:{self.address[1]} as port {UDP_PORT_NUMBER}"

    def close(self) -> None:
        self._sock.close()
