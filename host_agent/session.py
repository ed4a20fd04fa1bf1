"""What the agent needs of the controller: its job API (``JobApi``) and the admission it grants (``JoinResult``).

``JoinResult`` and ``SwitchEndpoint`` are defined once, with the job API's client (``netagg.controller.client``);
tests and tools that run without a controller build a ``JoinResult`` by hand.
"""

from __future__ import annotations

from typing import Any, Protocol

from netagg.controller.client import JoinResult, SwitchEndpoint

__all__ = ["JobApi", "JoinResult", "SwitchEndpoint"]


class JobApi(Protocol):
    """The part of the controller's job API client the agent uses (``netagg.controller.client``)."""

    def join(
        self,
        job: str,
        *,
        world_size: int,
        rank: int,
        addr: str,
        port: int,
        lanes: int,
        mac: str | None = None,
        slots: int | None = None,
        timeout: float = 60.0,
        lease_seconds: float | None = None,
    ) -> JoinResult:
        """Blocks until every rank joined; ``lease_seconds`` asks for a lease (None: the controller's)."""

    def leave(self, job: str, rank: int) -> Any: ...

    def heartbeat(self, job: str, rank: int) -> Any:
        """Renew the lease; a mapping answer may carry ``switch_generation`` (see ``Heartbeat``)."""
