"""Bursts of equal-size datagrams on the agent's connected UDP socket, and their headers as numpy vectors.

One system call per burst: sends use UDP GSO (one ``sendmsg`` with a ``UDP_SEGMENT`` control message over a
buffer of back-to-back datagrams), receives use UDP GRO (the kernel hands over a run of coalesced datagrams and
their segment size). Where the kernel refuses either, ``sendmmsg``/``recvmmsg`` do the same job with one call per
up to 64 datagrams. The choice is made once per socket and shown in ``send_mode``/``recv_mode``: GSO is dropped for
good at its first refusal, GRO when the switch's datagrams turn out to arrive one per receive (a switch that sends
them one by one: recvmmsg then takes up to 64 per call, where GRO would take one). The calls themselves are the
small C helper in host_agent/native/burst.c.

``HEADER_DTYPE`` is the aggregation header of netagg/wire.py as a numpy structured dtype, built from the wire
module's own ``struct`` format, so a burst buffer's headers are read and written as arrays (one field of every
datagram at once), never one ``struct`` call per packet.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Final

import numpy as np

from netagg.host_agent import _native
from netagg.wire import HEADER_BYTES, header_struct

log = logging.getLogger(__name__)

#: Field names of ``header_struct()``'s values, in its order (see its docstring).
HEADER_NAMES: Final = ("b0", "job", "tsi", "pool", "exp", "flags", "key", "op")
_NUMPY_CODES: Final = {"B": "u1", "b": "i1", "H": "u2", "h": "i2", "I": "u4", "i": "i4"}


def _header_dtype() -> np.dtype:
    fmt = header_struct().format
    if fmt[0] not in "!>" or len(fmt) - 1 != len(HEADER_NAMES):
        raise RuntimeError(f"wire header format {fmt!r} does not match the field names {HEADER_NAMES}")
    dtype = np.dtype([(name, ">" + _NUMPY_CODES[code]) for name, code in zip(HEADER_NAMES, fmt[1:])])
    if dtype.itemsize != HEADER_BYTES:
        raise RuntimeError(f"header dtype has {dtype.itemsize} bytes, the wire {HEADER_BYTES}")
    return dtype


#: One aggregation header (big-endian fields, no padding): ``headers(buf, count, stride)`` views a burst.
HEADER_DTYPE: Final = _header_dtype()

SEND_MODES: Final = ("gso", "sendmmsg")
RECV_MODES: Final = ("gro", "recvmmsg")
#: Errors of a GSO send that mean "this path cannot segment" (old kernel, device without checksum offload).
_GSO_REFUSED: Final = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
#: Send errors that only mean "not now": the datagrams are as good as lost, a retransmission covers them.
SOFT_SEND_ERRORS: Final = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED})
#: Receives that returned datagrams before "auto" decides between GRO and recvmmsg, and the datagrams per
#: receive below which GRO is not coalescing anything worth having.
_GRO_PROBE_CALLS: Final = 256
_GRO_MIN_PER_CALL: Final = 2.0


def headers(buf: np.ndarray, count: int, stride: int) -> np.ndarray:
    """The headers of ``count`` datagrams stored ``stride`` bytes apart at the start of ``buf`` (a view)."""
    return np.ndarray((count,), dtype=HEADER_DTYPE, buffer=buf, offset=0, strides=(stride,))


class BurstSocket:
    """Sends and receives bursts of ``seg``-byte datagrams on a connected, non-blocking UDP socket."""

    def __init__(self, sock: socket.socket, seg: int, max_burst: int, *, send_mode: str = "auto",
                 recv_mode: str = "auto") -> None:  # fmt: skip
        if send_mode not in ("auto", *SEND_MODES) or recv_mode not in ("auto", *RECV_MODES):
            raise ValueError(f"send mode {send_mode!r} / receive mode {recv_mode!r}: choose auto or one of "
                             f"{SEND_MODES} / {RECV_MODES}")  # fmt: skip
        self._sock = sock
        self.seg = seg
        self.max_burst = max_burst
        fd = sock.fileno()
        if send_mode == "auto":
            send_mode = "gso" if _native.probe_gso(fd, seg) == 0 else "sendmmsg"
        auto_recv = recv_mode == "auto"
        if auto_recv:
            recv_mode = "gro" if _native.enable_gro(fd) == 0 else "recvmmsg"
        elif recv_mode == "gro" and (err := _native.enable_gro(fd)) != 0:
            raise OSError(err, f"UDP GRO refused: {errno.errorcode.get(err, err)}")
        self.send_mode = send_mode
        self.recv_mode = recv_mode
        self._send_code = SEND_MODES.index(send_mode)
        self._recv_code = RECV_MODES.index(recv_mode)
        room = 65536 if recv_mode == "gro" else 0  # a coalesced run is received whole
        self.rbuf = np.zeros(max_burst * seg + room, np.uint8)
        self.send_calls = 0
        self.recv_calls = 0
        # "auto" GRO keeps an eye on how many datagrams one receive brings (see _watch_gro).
        self._gro_probe = auto_recv and recv_mode == "gro"
        self._gro_datagrams = 0
        self._gro_calls = 0

    @property
    def gro_probing(self) -> bool:
        """Whether "auto" is still watching GRO (see ``_watch_gro``); the compiled transport takes that over."""
        return self._gro_probe

    def send(self, buf: np.ndarray, count: int) -> tuple[int, int]:
        """Send ``count`` datagrams from ``buf`` (C-contiguous); returns (datagrams sent, errno that stopped it)."""
        fd = self._sock.fileno()
        sent, calls, err = _native.send_burst(fd, buf, self.seg, count, self._send_code)
        self.send_calls += calls
        if err in _GSO_REFUSED and self.send_mode == "gso":
            log.warning("UDP GSO refused (%s): sending with sendmmsg from now on", errno.errorcode.get(err, err))
            self.send_mode, self._send_code = "sendmmsg", 1
            more, calls, err = _native.send_burst(fd, buf[sent * self.seg :], self.seg, count - sent, 1)
            self.send_calls += calls
            sent += more
        return sent, err

    def recv(self, max_count: int) -> tuple[int, int]:
        """Receive up to ``max_count`` datagrams into ``rbuf`` (back to back); returns (good, wrong size).

        Raises OSError for a receive error other than "empty" or an ICMP port unreachable.
        """
        good, wrong, calls, err = _native.recv_burst(
            self._sock.fileno(), self.rbuf, self.seg, min(max_count, self.max_burst), self._recv_code
        )
        self.recv_calls += calls
        if err:
            raise OSError(err, f"receive on the aggregation socket failed: {errno.errorcode.get(err, err)}")
        if self._gro_probe and good:
            self._watch_gro(good, calls)
        return good, wrong

    def _watch_gro(self, good: int, calls: int) -> None:
        """Drop GRO for recvmmsg if the switch's datagrams do not arrive coalesced (it sends them one by one).

        GRO coalesces only what was sent as one GSO burst (or merged by a NIC); datagrams sent one at a time
        come one per system call, where recvmmsg takes up to 64. Decided once, after enough receives.
        """
        self._gro_datagrams += good
        self._gro_calls += calls - 1  # the last call of a burst finds the socket empty
        if self._gro_calls < _GRO_PROBE_CALLS:
            return
        self._gro_probe = False
        if self._gro_datagrams >= _GRO_MIN_PER_CALL * self._gro_calls:
            return
        if _native.disable_gro(self._sock.fileno()) == 0:
            log.info("the switch's datagrams arrive one by one (%.1f per receive): recvmmsg from now on",
                     self._gro_datagrams / self._gro_calls)  # fmt: skip
            self.recv_mode, self._recv_code = "recvmmsg", 1
