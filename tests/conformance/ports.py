"""Send and receive raw frames on the test ends of the switch's ports (AF_PACKET sockets).

``expect`` is the suite's only way to look at output: it waits (with a deadline) until the expected number of
frames has arrived on every port, then keeps listening on *all* ports for a short quiet period and fails if
anything else shows up. A negative check ("nothing leaves the switch") cannot be proven by waiting, only made
likely: callers first wait for the switch to account for the frame (a counter moved, so the frame has been
processed), and the quiet period then covers the short time a replica needs to reach the wire.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Mapping

from scapy.layers.l2 import Ether

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent
RCVBUF_BYTES = 4 << 20

#: How long to wait for frames that must arrive.
ARRIVAL_TIMEOUT_S = 10.0
#: How long every port must stay silent after the expected frames (see the module docstring).
QUIET_S = 0.25


class PortSet:
    """One AF_PACKET socket per switch port, bound to that port's test-side interface."""

    def __init__(self, ifaces: Mapping[int, str]) -> None:
        self._socks: dict[int, socket.socket] = {}
        try:
            for port, iface in ifaces.items():
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                # Bursts of replicas (32 workers, 1,000-frame loss runs) must not overflow the default buffer.
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF_BYTES)  # SO_RCVBUFFORCE (root)
                sock.bind((iface, ETH_P_ALL))
                sock.setblocking(False)
                self._socks[port] = sock
        except BaseException:
            self.close()
            raise
        self._by_fd = {sock.fileno(): port for port, sock in self._socks.items()}

    @property
    def ports(self) -> list[int]:
        return sorted(self._socks)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    def send(self, port: int, frame: bytes) -> None:
        sent = self._socks[port].send(frame)
        if sent != len(frame):
            raise OSError(f"port {port}: sent {sent} of {len(frame)} bytes")

    def drain(self) -> None:
        """Discard everything already queued (frames left over from a previous step)."""
        for port in self._socks:
            while self._recv(port) is not None:
                pass

    def take(self) -> dict[int, list[bytes]]:
        """Everything queued right now, per port, without waiting."""
        return {port: list(iter(lambda p=port: self._recv(p), None)) for port in self._socks}

    def _recv(self, port: int) -> bytes | None:
        """One received frame from ``port`` (frames we sent ourselves are skipped), or None if none is queued."""
        sock = self._socks[port]
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return None
            if addr[2] != PACKET_OUTGOING:
                return data

    def _poll(self, timeout: float) -> list[int]:
        readable, _, _ = select.select(list(self._socks.values()), [], [], max(timeout, 0.0))
        return [self._by_fd[s.fileno()] for s in readable]

    def expect(
        self,
        counts: Mapping[int, int],
        *,
        timeout: float = ARRIVAL_TIMEOUT_S,
        quiet: float = QUIET_S,
    ) -> dict[int, list[bytes]]:
        """Frames per port once ``counts[port]`` have arrived on every port (others: 0), then ``quiet`` s of silence."""
        unknown = set(counts) - set(self._socks)
        if unknown:
            raise ValueError(f"no such ports {sorted(unknown)}")
        got: dict[int, list[bytes]] = {port: [] for port in self._socks}

        def short() -> bool:
            return any(len(got[p]) < counts.get(p, 0) for p in got)

        def extra() -> bool:
            return any(len(got[p]) > counts.get(p, 0) for p in got)

        deadline = time.monotonic() + timeout
        while short() and not extra():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for port in self._poll(remaining):
                while (frame := self._recv(port)) is not None:
                    got[port].append(frame)
        if short() and not extra():
            raise AssertionError(f"after {timeout} s: {_describe(got, counts)}")
        quiet_end = time.monotonic() + quiet
        while not extra():
            remaining = quiet_end - time.monotonic()
            if remaining <= 0:
                break
            for port in self._poll(remaining):
                while (frame := self._recv(port)) is not None:
                    got[port].append(frame)
        if extra():
            raise AssertionError(f"unexpected frames: {_describe(got, counts)}")
        return got

    def expect_silence(self, quiet: float = QUIET_S) -> None:
        """Nothing arrives on any port for ``quiet`` seconds."""
        self.expect({}, quiet=quiet)


def _describe(got: Mapping[int, list[bytes]], counts: Mapping[int, int]) -> str:
    parts = []
    for port in sorted(got):
        want = counts.get(port, 0)
        frames = got[port]
        line = f"port {port}: {len(frames)} frames (want {want})"
        if len(frames) != want:
            line += "".join(f"\n    {Ether(f).summary()} [{len(f)} B]" for f in frames[:6])
        parts.append(line)
    return "; ".join(parts)
