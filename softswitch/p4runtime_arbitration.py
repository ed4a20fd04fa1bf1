"""Primary-backup arbitration of the controllers of one device (P4Runtime spec, "Client Arbitration").

As in BMv2's server: the live controller with the highest election id is the primary; election ids are unique
among live controllers; when the primary leaves, the next highest becomes primary. Every controller is told
its role in a MasterArbitrationUpdate (status OK for the primary, ALREADY_EXISTS for a backup), all of them
whenever the primary changes. Only the default role is supported.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

import grpc
from finsy.proto import p4r, rpc_code, rpc_status

from .codec import decode_u128, encode_u128
from .p4runtime_entities import P4RuntimeError

LOG = logging.getLogger(__name__)

#: Live controllers per device, as BMv2's server allows.
MAX_CONTROLLERS = 16


@dataclass(eq=False)
class Controller:
    """One StreamChannel. ``outbox``: what the stream must send (responses, or a P4RuntimeError to end it)."""

    peer: str
    election_id: int | None = None
    outbox: queue.SimpleQueue[p4r.StreamMessageResponse | P4RuntimeError | None] = field(
        default_factory=queue.SimpleQueue
    )


class Arbiter:
    """Election state of one device."""

    def __init__(self, device_id: int, max_controllers: int = MAX_CONTROLLERS) -> None:
        self.device_id = device_id
        self.max_controllers = max_controllers
        self._lock = threading.Lock()
        self._live: list[Controller] = []  # arbitrated controllers

    def arbitrate(self, ctl: Controller, update: p4r.MasterArbitrationUpdate) -> None:
        """Handle a MasterArbitrationUpdate from ``ctl``; raise P4RuntimeError to terminate its stream."""
        if update.role.name or update.role.id or update.role.HasField("config"):
            raise P4RuntimeError(
                grpc.StatusCode.UNIMPLEMENTED, "only the default role is supported: leave role unset"
            )
        election_id = decode_u128(update.election_id)
        with self._lock:
            first = ctl.election_id is None
            if update.device_id != self.device_id:
                if first:
                    raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, f"unknown device id {update.device_id}")
                raise P4RuntimeError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"device id {update.device_id} differs from this stream's {self.device_id}",
                )
            if any(c.election_id == election_id for c in self._live if c is not ctl):
                raise P4RuntimeError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"election id {election_id} is already used by another controller",
                )
            if first and len(self._live) >= self.max_controllers:
                raise P4RuntimeError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many controllers (at most {self.max_controllers})",
                )
            old_primary = self._primary()
            ctl.election_id = election_id
            if first:
                self._live.append(ctl)
            new_primary = self._primary()
            LOG.info(
                "controller %s: election id %d, %s",
                ctl.peer,
                election_id,
                "primary" if new_primary is ctl else "backup",
            )
            if new_primary is not old_primary:
                self._notify_all()
            else:
                self._notify(ctl)

    def remove(self, ctl: Controller) -> None:
        """Forget a controller whose stream ended; a new primary (if any) and the backups are told."""
        with self._lock:
            if ctl not in self._live:
                return
            was_primary = self._primary() is ctl
            self._live.remove(ctl)
            LOG.info("controller %s left%s", ctl.peer, " (was primary)" if was_primary else "")
            if was_primary:
                self._notify_all()

    def check_primary(self, request_has_election_id: bool, election_id: int, peer: str | None = None) -> None:
        """Raise PERMISSION_DENIED unless a Write/SetForwardingPipelineConfig comes from the primary.

        The primary is the controller whose stream is open with the highest election id; a request is the
        primary's when it carries that election id AND arrives on the connection (``peer``) of that stream. An
        election id is no secret: without the connection check, any client that learns it could write as the
        primary without ever arbitrating (the P4Runtime spec ties the primary role to its open stream).

        With no controller connected, requests without an election id are accepted (as BMv2's server does, so
        that one-shot tools work) and requests with one are refused.
        """
        with self._lock:
            primary = self._primary()
            if primary is None:
                if request_has_election_id:
                    raise P4RuntimeError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        "not primary: no controller has arbitrated on a stream",
                    )
                return
            if primary.election_id != election_id:
                raise P4RuntimeError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"not primary: election id {election_id}, the primary's is {primary.election_id}",
                )
            if peer is not None and peer != primary.peer:
                raise P4RuntimeError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"not primary: election id {election_id} belongs to the stream of {primary.peer}, and this "
                    f"request came from {peer}; send requests on the connection that holds the stream",
                )

    def primary_election_id(self) -> int | None:
        with self._lock:
            primary = self._primary()
            return None if primary is None else primary.election_id

    def _primary(self) -> Controller | None:
        return max(self._live, key=lambda c: c.election_id or 0, default=None)

    def _notify_all(self) -> None:
        for c in self._live:
            self._notify(c)

    def _notify(self, ctl: Controller) -> None:
        primary = self._primary()
        assert primary is not None and primary.election_id is not None
        if primary is ctl:
            status = rpc_status.Status(code=rpc_code.OK, message="Is primary")
        else:
            status = rpc_status.Status(code=rpc_code.ALREADY_EXISTS, message="Is backup")
        ctl.outbox.put(
            p4r.StreamMessageResponse(
                arbitration=p4r.MasterArbitrationUpdate(
                    device_id=self.device_id, election_id=encode_u128(primary.election_id), status=status
                )
            )
        )
