"""Periodic heartbeat to the controller while a client is joined."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from netagg.host_agent.session import JobApi

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls ``controller.heartbeat(job, rank)`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(
        self,
        controller: JobApi,
        job: str,
        rank: int,
        interval: float,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        """``on_lost`` is called once, and heartbeats stop, when the controller answers that the job is unknown."""
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        self._controller = controller
        self._job = job
        self._rank = rank
        self._interval = interval
        self._on_lost = on_lost
        self._stop = threading.Event()
        self.sent = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=f"netagg-heartbeat-{job}-r{rank}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._controller.heartbeat(self._job, self._rank)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is logged, the data path goes on
                self.failures += 1
                if getattr(exc, "status", None) == 404:  # the job API's answer for a job it does not know
                    log.error("the controller no longer knows job %r rank %d: %s", self._job, self._rank, exc)
                    if self._on_lost is not None:
                        self._on_lost(exc)
                    return
                log.warning("heartbeat of job %r rank %d failed: %s", self._job, self._rank, exc)
