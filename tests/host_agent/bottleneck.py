"""A shaped link for host agent tests: a rate limit with a drop-tail queue on the fake switch's egress port.

Packets leave at most at ``rate`` bytes per second; a packet that finds ``queue`` packets waiting is dropped, as a
switch port's buffer (or ``tc tbf``) drops it. Several FakeSwitch instances may share one Bottleneck: their jobs
then share the port, as two jobs share a switch's port towards a host. Departure times are computed when a packet
is queued, so a sender thread that wakes late sends everything due at once and the average rate still holds on a
loaded machine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque


class Bottleneck:
    """One egress port: ``rate`` bytes/s, room for ``queue`` packets."""

    def __init__(self, rate: float, queue: int) -> None:
        self.rate = rate
        self.queue = queue
        self.sent = 0
        self.dropped = 0
        self._waiting: deque[tuple[float, socket.socket, bytes, tuple[str, int]]] = deque()
        self._last_departure = 0.0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="bottleneck", daemon=True)
        self._thread.start()

    def enqueue(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        with self._cond:
            if len(self._waiting) >= self.queue:
                self.dropped += 1
                return
            departure = max(time.monotonic(), self._last_departure) + len(data) / self.rate
            self._last_departure = departure
            self._waiting.append((departure, sock, data, addr))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait(0.1)
                if self._stop:
                    return
                now = time.monotonic()
                due = []
                while self._waiting and self._waiting[0][0] <= now:
                    due.append(self._waiting.popleft())
                if not due:
                    self._cond.wait(self._waiting[0][0] - now)  # pacing: the next departure, or a new packet
                    continue
            for _, sock, data, addr in due:
                try:
                    sock.sendto(data, addr)
                    self.sent += 1
                except OSError:
                    self.dropped += 1

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5)
