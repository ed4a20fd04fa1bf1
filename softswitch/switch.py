"""The software switch: pipeline + ports + P4Runtime server, started and stopped together.

``SoftSwitch.start()`` opens nothing itself (the ports are opened by whoever builds them), starts the control
plane server if there is one and then the data path thread, which polls the ports and runs the frames received
on a port as one burst through the pipeline (``Pipeline.process_burst``). With native port I/O a burst comes in
with one call (recvmmsg) and goes out with one call per port (sendmmsg). ``stop()`` wakes that thread, waits for
it with a deadline and stops the server.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Final, Protocol, Self

from .pipeline import BURST_FRAMES, Burst, OutBurst, Pipeline
from .ports import PortIO
from .state import SwitchState

log = logging.getLogger(__name__)

#: How long stop() waits for the data path thread.
STOP_TIMEOUT_S: Final = 5.0
#: Upper bound of one poll (stop() wakes the loop at once through a pipe; this is only a safety net).
POLL_TIMEOUT_MS: Final = 1000


class ControlServer(Protocol):
    """What the switch needs from its P4Runtime server."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SoftSwitch:
    """One running software switch.

    ``server`` is optional so the data path can run alone (tests, benchmarks), with tables written directly into
    ``pipeline.state``.
    """

    def __init__(self, pipeline: Pipeline, ports: PortIO, server: ControlServer | None = None) -> None:
        self.pipeline = pipeline
        self.ports = ports
        self.server = server
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._closed = False
        self.error: BaseException | None = None

    @property
    def state(self) -> SwitchState:
        return self.pipeline.state

    def start(self) -> None:
        """Start the control plane server, then the data path; return once both are running."""
        if self._thread is not None:
            raise RuntimeError("switch already started")
        try:
            if self.server is not None:
                self.server.start()
            self._thread = threading.Thread(target=self._run, name="softswitch-datapath", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()  # close the ports even though the switch never ran
            raise

    def stop(self) -> None:
        """Stop the data path and the server, close the ports; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                log.error("data path thread did not stop within %.0f s", STOP_TIMEOUT_S)
        if self.server is not None:
            self.server.stop()
        self.ports.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the CLI, which exits non-zero
            self.error = exc
            log.exception("data path failed")

    def _loop(self) -> None:
        poller = select.poll()
        for fd in self.ports.fds():
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        ports = self.ports
        native = ports.native
        receive = ports.receive
        receive_burst = ports.receive_burst
        pending_fds = ports.pending_fds
        send_burst = ports.send_burst
        process_burst = self.pipeline.process_burst
        wake = self._wake_read
        # One burst per ready socket: native ports fill `burst` with one call; Python ports hand frames over one
        # by one and they are copied in. The pipeline runs them together (the native data path in one kernel call)
        # and what it emits leaves as one output burst.
        burst = Burst()
        out = OutBurst()

        def send_out(full: OutBurst) -> None:
            send_burst(full)
            full.clear()

        def collect(frame: memoryview, ingress_port: int) -> None:
            if not burst.append(ingress_port, frame):
                process_burst(burst, out, send_out)
                burst.clear()
                if not burst.append(ingress_port, frame):  # larger than a whole burst buffer: alone
                    single = Burst(1, len(frame))
                    single.append(ingress_port, frame)
                    process_burst(single, out, send_out)

        pending: list[int] = []
        while not self._stopping.is_set():
            # Frames already received but left over from a full burst are served without waiting.
            ready: list[int] = []
            for fd, events in poller.poll(0 if pending else POLL_TIMEOUT_MS):
                if fd == wake:
                    continue  # stop() wrote to the pipe; the loop condition ends us
                if events & select.POLLNVAL:
                    poller.unregister(fd)
                    log.error("port socket %d was closed under the data path; it is no longer served", fd)
                    continue
                ready.append(fd)
            ready += [fd for fd in pending if fd not in ready]
            for fd in ready:
                burst.clear()
                # POLLERR too: reading consumes the socket error (e.g. ENETDOWN while a link flaps).
                if native:
                    receive_burst(fd, burst)
                else:
                    receive(fd, collect, BURST_FRAMES)
                if burst.count:
                    process_burst(burst, out, send_out)
                if out.count or out.oversize:
                    send_out(out)
            pending = pending_fds()
