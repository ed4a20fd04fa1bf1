"""The whole controller wired together: switch connection, job manager, statistics, HTTP API."""

from __future__ import annotations

import logging
from pathlib import Path

from netagg import artifacts

from .api import ApiServer
from .epochs import EpochCounter
from .jobs import JobManager
from .stats import StatsReader
from .switch import SwitchConnection
from .topology import Topology

log = logging.getLogger(__name__)

#: The compiled pipeline committed in the repository.
DEFAULT_P4INFO = artifacts.P4INFO
DEFAULT_BMV2_JSON = artifacts.BMV2_JSON


class Controller:
    """Start with ``start()``, stop with ``stop()``; ``api.url`` is where host agents reach it."""

    def __init__(
        self,
        topology: Topology,
        *,
        p4info: Path = DEFAULT_P4INFO,
        bmv2_json: Path = DEFAULT_BMV2_JSON,
        api_address: tuple[str, int] = ("127.0.0.1", 9590),
        lease_seconds: float | None = None,
    ) -> None:
        self.topology = topology
        # One counter: the job manager takes epochs from it, the switch layer tells it of every pipeline push.
        epochs = EpochCounter()
        self.switch = SwitchConnection(topology, p4info, bmv2_json, epochs=epochs)
        self.stats = StatsReader(self.switch)
        self.jobs = JobManager(
            topology,
            self.switch,
            lease_seconds=lease_seconds,
            epochs=epochs,
            on_admitted=self.stats.mark_start,
            on_teardown=self.stats.mark_end,
        )
        self._api_address = api_address
        self.api: ApiServer | None = None

    def start(self, connect_timeout: float = 30.0) -> None:
        """Program the switch, then open the API (no job is admitted before the switch is ready)."""
        self.switch.start(connect_timeout)
        try:
            self.api = ApiServer(self._api_address, self.jobs, self.stats.collect)
        except OSError as ex:
            self.switch.stop()
            raise OSError(f"cannot listen on {self._api_address[0]}:{self._api_address[1]}: {ex.strerror}") from None
        self.api.start()
        self.jobs.start_reaper()
        log.info("controller ready: switch %s, job API %s", self.topology.address, self.api.url)

    def stop(self) -> None:
        """Stop serving; jobs stay installed on the switch (the next controller start pushes the pipeline anew)."""
        self.jobs.stop_reaper()
        if self.api is not None:
            self.api.shutdown()
            self.api.server_close()
            self.api = None
        self.switch.stop()
