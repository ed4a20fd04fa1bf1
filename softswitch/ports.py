"""Packet I/O of the software switch: raw Ethernet ports (AF_PACKET) or one UDP endpoint.

Both kinds expose the same small interface to the switch loop (``PortIO``): the file descriptors to poll, and
two ways to move frames. With ``native`` I/O (the default unless ``$NETAGG_DATAPATH`` is ``python``),
``receive_burst(fd, burst)`` fills a whole burst with one recvmmsg and ``send_burst(out)`` sends one with
sendmmsg calls, both in C (``softswitch/native/io.c``); ``pending_fds()`` names the sockets whose received frames
did not all fit the last burst. Without it, ``receive(fd, handler)`` hands each frame to the loop and
``send(port, frame)`` sends it, one Python call per frame (the reference, kept for the python data path).

``AfPacketPorts`` binds one raw socket per ``PORT@IFACE``, like simple_switch_grpc's ``-i``. Native sockets have
PACKET_VNET_HDR on: a UDP GSO frame (a host's burst that crossed a veth as one frame) is split into its datagrams
and checksums left to offload are completed. The Python path reads frames from a PACKET_RX_RING instead.

``UdpPorts`` makes the switch a UDP endpoint so that workers on one machine need neither root nor interfaces:
each datagram is wrapped in synthesized Ethernet/IPv4/UDP headers as if it had arrived on switch port
``UDP_PORT_NUMBER`` from its sender, and RESULT frames leaving on that port are sent back as datagrams.
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

import numpy as np

from netagg.constants import AGG_UDP_PORT, DATAPATH_ENV, PORT_BITS
from netagg.wire import AGG_OFFSET, ETH_HEADER_BYTES, IPV4_HEADER_BYTES, IPV4_UDP, UDP_HEADER_BYTES

from . import _native
from .pipeline import Burst, OutBurst

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
#: Every frame read or written on the socket is preceded by a struct virtio_net_hdr (GSO and checksum offload).
PACKET_VNET_HDR: Final = 15
TPACKET_V2: Final = 1
#: tp_status bit: the frame belongs to user space (filled by the kernel, not yet handed back).
TP_STATUS_USER: Final = 1
SIOCGIFMTU: Final = 0x8921
#: struct tpacket2_hdr up to tp_mac: tp_status, tp_len, tp_snaplen, tp_mac.
_TPACKET2 = struct.Struct("IIIH")
#: Offset of sockaddr_ll's sll_pkttype in a TPACKET_V2 frame (after the 32-byte header, at +10).
_TPACKET2_PKTTYPE: Final = 32 + 10
#: Ring bytes per port; with 2 KiB frames (MTU 1500) that is 2048 frames of backlog.
RX_RING_BYTES: Final = 4 << 20
#: Ring frame bytes beyond the Ethernet frame: tpacket2 header, sockaddr_ll, alignment, a VLAN tag.
_RING_FRAME_OVERHEAD: Final = 128
#: A struct virtio_net_hdr asking for nothing (no checksum to complete, no segmentation), for single sends.
_NO_OFFLOAD: Final = bytes(10)

#: The switch port number UDP-mode datagrams arrive on and RESULTs must leave by.
UDP_PORT_NUMBER: Final = 1
#: Address ``--udp`` binds when given no HOST:PORT.
DEFAULT_UDP_ADDRESS: Final = ("127.0.0.1", AGG_UDP_PORT)

#: Largest frame read from a socket (GRO can hand raw sockets frames above the MTU; they are still read whole).
RECV_BUFFER_BYTES: Final = 65536 + AGG_OFFSET
#: Frames drained from one socket before the loop looks at the others (fairness between ports).
RECV_BUDGET: Final = 64
SOCKET_BUFFER_BYTES: Final = 4 << 20

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
    #: Frames too large to receive whole (GRO/LRO on the switch's interface): dropped.
    rx_truncated: int = 0
    #: UDP GSO frames split into their datagrams (native I/O; the datagrams count in ``rx``).
    rx_gso_split: int = 0
    #: Segmentation-offload frames that cannot be split (TCP, malformed): dropped.
    rx_unsplit: int = 0


def native_io_default() -> bool:
    """Whether ports use the compiled burst I/O when not told: unless ``$NETAGG_DATAPATH`` is ``python``."""
    return (os.environ.get(DATAPATH_ENV) or "native").strip().lower() != "python"


class PortIO:
    """The interface the switch loop drives; subclasses own the sockets."""

    #: True when ``receive_burst`` moves whole bursts in C; the switch loop then never calls ``receive``.
    native = False

    def __init__(self) -> None:
        self.stats = PortStats()

    def fds(self) -> list[int]:
        """File descriptors to poll for input."""
        raise NotImplementedError

    def receive(self, fd: int, handler: FrameHandler, budget: int = RECV_BUDGET) -> int:
        """Read up to ``budget`` frames from ``fd`` without blocking; return how many were handled."""
        raise NotImplementedError

    def receive_burst(self, fd: int, burst: Burst) -> int:
        """Native I/O: append the frames ready on ``fd`` to ``burst`` without blocking; how many."""
        raise NotImplementedError

    def pending_fds(self) -> list[int]:
        """Sockets with received frames that did not fit the last burst (serve them without waiting for poll)."""
        return []

    def send(self, port: int, frame: bytes) -> None:
        """Transmit ``frame`` on switch port ``port``; failures are counted."""
        raise NotImplementedError

    def send_burst(self, out: OutBurst) -> None:
        """Transmit every frame of ``out`` (then its ``oversize`` frames), in order per port."""
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


class AfPacketPorts(PortIO):
    """One raw AF_PACKET socket per switch port, bound to its interface.

    ``native`` (default: ``native_io_default()``): bursts move by recvmmsg / sendmmsg in C, and UDP GSO frames
    are split; otherwise frames are read from a PACKET_RX_RING and sent one call each, in Python.
    """

    def __init__(self, interfaces: dict[int, str], native: bool | None = None) -> None:
        super().__init__()
        if not interfaces:
            raise ValueError("no interfaces given")
        ifaces = list(interfaces.values())
        duplicates = {i for i in ifaces if ifaces.count(i) > 1}
        if duplicates:
            raise ValueError(f"interfaces bound to more than one port: {sorted(duplicates)}")
        self.native = native_io_default() if native is None else native
        self.interfaces = dict(interfaces)
        self._sockets: dict[int, socket.socket] = {}
        self._port_of_fd: dict[int, int] = {}
        self._filter_outgoing: dict[int, bool] = {}
        self._rings: dict[int, RxRing] = {}
        self._receivers: dict[int, _native.Receiver] = {}
        #: The bound send() of each port's socket, looked up once (the per-frame path is a dict index and a call).
        self._send_of: dict[int, Callable[[bytes], int]] = {}
        #: Native sends: the socket of every port number (-1: no such port), as the C code indexes it.
        self._fd_of_port = np.full(max(self.interfaces) + 1, -1, dtype=np.int32)
        self._buffer = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._warned: set[str] = set()
        #: (GSO frames split, truncated, unsplit) of each native receiver as last folded into ``stats``.
        self._seen: dict[int, tuple[int, int, int]] = {}
        try:
            for port, iface in sorted(self.interfaces.items()):
                self._open(port, iface)
        except BaseException:
            self.close()
            raise

    def _open(self, port: int, iface: str) -> None:
        try:
            # Protocol 0 until bound: a socket created with ETH_P_ALL would see every interface's traffic
            # in the window before bind().
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise PortError(exc.errno, f"port {port}@{iface}: raw sockets need root or CAP_NET_RAW") from None
        ring = None
        try:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                filter_outgoing = False
            except OSError:  # kernel older than 4.20: filter by packet type on receive instead
                filter_outgoing = True
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            mtu = self._mtu(sock, iface)
            if self.native:
                sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            else:
                ring = self._open_ring(sock, port, iface, mtu, filter_outgoing)
            sock.bind((iface, ETH_P_ALL))
            # Promiscuous for as long as the socket lives: a switch port receives frames for any MAC.
            ifindex = socket.if_nametoindex(iface)
            sock.setsockopt(
                SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            )
            sock.setblocking(False)
        except OSError as exc:
            if ring is not None:
                ring.close()
            sock.close()
            raise PortError(exc.errno, f"port {port}@{iface}: {exc.strerror or exc}") from None
        fd = sock.fileno()
        self._sockets[port] = sock
        self._send_of[port] = sock.send
        self._port_of_fd[fd] = port
        self._filter_outgoing[fd] = filter_outgoing
        self._fd_of_port[port] = fd
        if ring is not None:
            self._rings[fd] = ring
        if self.native:
            self._receivers[fd] = _native.Receiver(fd, _native.IO_PACKET, port, filter_outgoing)

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

    def fds(self) -> list[int]:
        return list(self._port_of_fd)

    def ring_ports(self) -> list[int]:
        """Ports served by a receive ring (the others receive frame by frame or, natively, by recvmmsg)."""
        return sorted(self._port_of_fd[fd] for fd in self._rings)

    def receive_burst(self, fd: int, burst: Burst) -> int:
        receiver = self._receivers[fd]
        before = burst.count
        burst.count, burst.used = receiver.receive(burst.buffer, burst.meta, before, burst.used, len(burst.meta))
        got = burst.count - before
        self.stats.rx += got
        _, gso, truncated, unsplit, errors, last_error = receiver.stats()
        if (gso, truncated, unsplit) != self._seen.get(fd, (0, 0, 0)):
            self._account(fd, gso, truncated, unsplit)
        if not got and errors:
            log.debug("port %d: receive failed: %s", self._port_of_fd[fd], os.strerror(last_error))
        return got

    def _account(self, fd: int, gso: int, truncated: int, unsplit: int) -> None:
        """Fold a receiver's new totals into ``stats``; warn once about frames it had to drop."""
        old_gso, old_truncated, old_unsplit = self._seen.get(fd, (0, 0, 0))
        self._seen[fd] = (gso, truncated, unsplit)
        self.stats.rx_gso_split += gso - old_gso
        self.stats.rx_truncated += truncated - old_truncated
        self.stats.rx_unsplit += unsplit - old_unsplit
        port = self._port_of_fd[fd]
        if truncated > old_truncated:
            self._warn_once("truncated", "port %d: a frame larger than 64 KiB was dropped; turn GRO/LRO off", port)
        if unsplit > old_unsplit:
            self._warn_once(
                "unsplit", "port %d: a TCP segmentation offload frame was dropped; hosts sending through the "
                "switch must turn TSO off (ethtool -K IFACE tso off)", port,
            )  # fmt: skip

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def pending_fds(self) -> list[int]:
        return [fd for fd, receiver in self._receivers.items() if receiver.pending()]

    def receive(self, fd: int, handler: FrameHandler, budget: int = RECV_BUDGET) -> int:
        port = self._port_of_fd[fd]
        ring = self._rings.get(fd)
        if ring is not None:
            handled = ring.receive(port, handler, budget)
            if not handled:
                # Woken with an empty ring: a socket error (ENETDOWN after a link flap) wakes poll until it is
                # read, and nothing else reads it on a port that sends nothing.
                error = self._sockets[port].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    log.debug("port %d: %s", port, os.strerror(error))
            self.stats.rx += handled
            self.stats.rx_truncated = sum(r.truncated for r in self._rings.values())
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
        """One send call on the port's socket (with a virtio_net_hdr asking for nothing on native sockets)."""
        sock = self._sockets.get(port)
        if sock is None:
            self.stats.tx_unroutable += 1
            return
        try:
            if self.native:
                sock.sendmsg([_NO_OFFLOAD, frame])
            else:
                self._send_of[port](frame)
        except OSError as exc:
            self.stats.tx_errors += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("port %d: send of %d bytes failed: %s", port, len(frame), exc)
            return
        self.stats.tx += 1

    def send_burst(self, out: OutBurst) -> None:
        if not self.native:
            super().send_burst(out)
            return
        if out.count:
            sent, errors, unroutable, last_error = _native.send_packet(
                self._fd_of_port, out.buffer, out.meta, out.count
            )
            stats = self.stats
            stats.tx += sent
            stats.tx_errors += errors
            stats.tx_unroutable += unroutable
            if errors and last_error not in (errno.EAGAIN, errno.ENOBUFS):
                log.debug("%d sends failed, the last with: %s", errors, os.strerror(last_error))
        for port, frame in out.oversize:
            self.send(port, frame)

    def describe(self) -> str:
        return "ports " + ", ".join(f"{p}@{i}" for p, i in sorted(self.interfaces.items()))

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        self._receivers.clear()  # before the sockets: a receiver reads its socket by number
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._send_of.clear()
        self._port_of_fd.clear()
        self._fd_of_port[:] = -1


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
    """The switch as a UDP endpoint: port ``UDP_PORT_NUMBER`` is the socket; no other port exists.

    ``native`` (default: ``native_io_default()``): datagrams move by recvmmsg / sendmmsg in C, which writes the
    same synthesized headers; otherwise one receive and one send call per datagram, in Python.
    """

    def __init__(self, address: tuple[str, int], agg_address: AddressSource, native: bool | None = None) -> None:
        super().__init__()
        self.native = native_io_default() if native is None else native
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
        self._fd = self._sock.fileno()
        self._receiver = _native.Receiver(self._fd, _native.IO_UDP, UDP_PORT_NUMBER) if self.native else None
        self._set_destination((bytes(6), 0))

    def _set_destination(self, agg: tuple[bytes, int]) -> None:
        self._current_agg = agg
        self._buffer[0:6] = agg[0]
        if self._receiver is not None:
            self._receiver.set_framing(agg[0], agg[1], AGG_UDP_PORT)

    def receive_burst(self, fd: int, burst: Burst) -> int:
        receiver = self._receiver
        assert receiver is not None, "receive_burst() needs native I/O"
        agg = self._agg_address() or (bytes(6), 0)
        if agg != self._current_agg:
            self._set_destination(agg)
        before = burst.count
        burst.count, burst.used = receiver.receive(burst.buffer, burst.meta, before, burst.used, len(burst.meta))
        got = burst.count - before
        self.stats.rx += got
        if not got:
            errors, last_error = receiver.stats()[4:]
            if errors:  # e.g. ECONNREFUSED from an earlier send's ICMP error: read, and so cleared
                log.debug("UDP receive failed: %s", os.strerror(last_error))
        return got

    def pending_fds(self) -> list[int]:
        return [self._fd] if self._receiver is not None and self._receiver.pending() else []

    def send_burst(self, out: OutBurst) -> None:
        if self._receiver is None:
            super().send_burst(out)
            return
        if out.count:
            sent, errors, unroutable, last_error = _native.send_udp(
                self._fd, UDP_PORT_NUMBER, out.buffer, out.meta, out.count
            )
            self.stats.tx += sent
            self.stats.tx_errors += errors
            self.stats.tx_unroutable += unroutable
            if errors:
                log.debug("%d UDP sends failed, the last with: %s", errors, os.strerror(last_error))
        for port, frame in out.oversize:
            self.send(port, frame)

    def fds(self) -> list[int]:
        return [self._sock.fileno()]

    def receive(self, fd: int, handler: FrameHandler, budget: int = RECV_BUDGET) -> int:
        buffer = self._buffer
        view = self._view
        payload = self._payload
        pack_into = IPV4_UDP.pack_into
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
        self._receiver = None  # before the socket: the receiver reads it by number
        self._sock.close()
