"""The whole controller wired together: switch connection, job manager, statistics, HTTP API."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from netagg import artifacts

from .api import ApiServer
from .auth import Tenant, TokenFileError, default_token_file, load_or_create_token, read_token
from .epochs import EpochCounter
from .errors import ConfigError
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
        token_file: Path | None = None,
        tenants: Sequence[Tenant] | None = None,
    ) -> None:
        """``tenants``: the job API's credentials; by default read from the token files (``load_tenants``)."""
        self.topology = topology
        self.tenants = list(tenants) if tenants is not None else load_tenants(topology, token_file)
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
            switch_generation=lambda: self.switch.pipeline_generation,
        )
        self._api_address = api_address
        self.api: ApiServer | None = None

    def start(self, connect_timeout: float = 30.0) -> None:
        """Program the switch, then open the API (no job is admitted before the switch is ready)."""
        self.switch.start(connect_timeout)
        try:
            self.api = ApiServer(self._api_address, self.jobs, self.stats.collect, tenants=self.tenants)
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


def load_tenants(topology: Topology, token_file: Path | None = None) -> list[Tenant]:
    """The job API's credentials: the token file (``token_file``, else the config's, else the default), created
    with a new random token when missing, then every tenant token file of the config (which must exist)."""
    path = token_file or topology.token_file or default_token_file()
    try:
        token, created = load_or_create_token(path)
        tenants = [Tenant(str(path), token)]
        for extra in topology.tenant_token_files:
            tenants.append(Tenant(str(extra), read_token(extra)))
    except TokenFileError as ex:
        raise ConfigError(str(ex)) from None
    log.info("job API credential: %s token file %s%s", "new" if created else "the", path,
             f" and {len(tenants) - 1} tenant token file(s)" if len(tenants) > 1 else "")
    return tenants
