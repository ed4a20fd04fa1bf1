"""Periodic heartbeat to the controller while a client is joined; it also watches for a switch restart."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from netagg.host_agent.session import JobApi

log = logging.getLogger(__name__)

#: The heartbeat interval as a fraction of the granted lease: three heartbeats may be lost before it expires.
LEASE_FRACTION = 0.25


def interval_for_lease(lease_seconds: float, longest: float) -> float:
    """The heartbeat interval for a granted lease: a quarter of it, at most ``longest``."""
    return min(longest, lease_seconds * LEASE_FRACTION)


class Heartbeat:
    """Calls ``controller.heartbeat(job, rank)`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(
        self,
        controller: JobApi,
        job: str,
        rank: int,
        interval: float,
        on_lost: Callable[[BaseException], None] | None = None,
        *,
        switch_generation: int | None = None,
        on_switch_restart: Callable[[int, int], None] | None = None,
    ) -> None:
        """``on_lost`` is called once, and heartbeats stop, when the controller answers that the job is unknown.

        ``on_switch_restart(joined, now)`` is called once, and heartbeats go on, when an answer carries another
        ``switch_generation`` than the join's (``switch_generation``; None: not watched).
        """
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        self._controller = controller
        self._job = job
        self._rank = rank
        self._interval = interval
        self._on_lost = on_lost
        self._generation = switch_generation
        self._on_switch_restart = on_switch_restart
        self._stop = threading.Event()
        self.sent = 0
        self.failures = 0
        self.switch_restarted = False
        self._thread = threading.Thread(target=self._run, name=f"netagg-heartbeat-{job}-r{rank}", daemon=True)

    @property
    def interval(self) -> float:
        return self._interval

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                answer = self._controller.heartbeat(self._job, self._rank)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is logged, the data path goes on
                self.failures += 1
                if getattr(exc, "status", None) == 404:  # the job API's answer for a job it does not know
                    log.error("the controller no longer knows job %r rank %d: %s", self._job, self._rank, exc)
                    if self._on_lost is not None:
                        self._on_lost(exc)
                    return
                log.warning("heartbeat of job %r rank %d failed: %s", self._job, self._rank, exc)
                continue
            self._check_generation(answer)

    def _check_generation(self, answer: object) -> None:
        if self._generation is None or self.switch_restarted or not isinstance(answer, Mapping):
            return
        now = answer.get("switch_generation")
        if isinstance(now, int) and not isinstance(now, bool) and now != self._generation:
            self.switch_restarted = True
            log.error("the switch of job %r restarted (generation %d at join, now %d): its rounds in flight are lost",
                      self._job, self._generation, now)
            if self._on_switch_restart is not None:
                self._on_switch_restart(self._generation, now)
