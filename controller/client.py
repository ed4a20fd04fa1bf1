"""Python client of the controller's job API (what the host agent, the CLIs and the torch backend use).

Standard library only. ``JoinResult`` is the one definition of a join answer: the agent runs on it.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netagg.constants import AGG_UDP_PORT, MAX_WORKERS, POOL_SLOTS
from netagg.wire import U32_MAX, WireError, size_for_lanes

from .api import DEFAULT_API_PORT, parse_address
from .auth import ENV_TOKEN, ENV_TOKEN_FILE, TokenFileError, check_token, default_token_file, read_token

#: Extra time a join's HTTP request waits beyond the join's own timeout (the server answers at the deadline).
_JOIN_SLACK = 15.0


class ControllerClientError(Exception):
    """The controller answered with an error; ``type`` is the server's error class name (e.g. PoolExhausted)."""

    def __init__(self, status: int, type: str, message: str) -> None:
        self.status, self.type, self.message = status, type, message
        super().__init__(f"{type}: {message} (HTTP {status})" if status else f"{type}: {message}")


class ControllerUnreachable(ControllerClientError):
    """No answer from the controller (not running, wrong address, or it did not answer in time)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "ControllerUnreachable", f"controller at {url}: {reason}")


class CredentialError(ControllerClientError):
    """The client found no usable credential (token) for the job API; nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "CredentialError", message)


class BadJoinAnswer(ControllerClientError, ValueError):
    """The controller's join answer is malformed or out of range (a controller of another version?)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "BadJoinAnswer", message)


@dataclass(frozen=True, slots=True)
class SwitchEndpoint:
    """Where UPDATEs go: the switch's aggregation MAC, IPv4 address and UDP port."""

    mac: str
    addr: str
    port: int = AGG_UDP_PORT


@dataclass(frozen=True, slots=True)
class JoinResult:
    """One rank's admission to a job (the join answer); tools without a controller build one by hand."""

    job: str  # the job's name, as the workers called it
    job_id: int  # the job byte on the wire
    worker_id: int
    world_size: int
    lanes: int  # admitted lanes per packet
    slots: int  # slots of the pool granted to the job (every worker uses slot numbers 0..slots-1)
    epoch: int
    switch: SwitchEndpoint
    rank: int = 0
    lease_seconds: float | None = None  # granted: the controller drops a job whose rank is silent for this long
    #: This worker's data-plane key: put in every UPDATE, expected in every RESULT (docs/security.md). 0 only for
    #: hand-built admissions whose switch tables say 0 too. A secret, so it stays out of the repr (and so out of
    #: logs and tracebacks that print the result).
    key: int = field(default=0, repr=False)
    #: The switch's pipeline generation at the join; a heartbeat answer with another one means the switch lost
    #: its registers, and with them the job's rounds in flight. None: not known (a hand-built admission).
    switch_generation: int | None = None

    def __post_init__(self) -> None:
        where = f"job {self.job!r} rank {self.rank}"
        if not 0 <= self.job_id <= 0xFF:
            raise BadJoinAnswer(f"job id {self.job_id} of {where} does not fit the wire's job byte")
        if not 1 <= self.world_size <= MAX_WORKERS:
            raise BadJoinAnswer(f"world size {self.world_size} of {where} is not in 1..{MAX_WORKERS}")
        if not 0 <= self.worker_id < self.world_size:
            raise BadJoinAnswer(f"worker id {self.worker_id} of {where} is outside world size {self.world_size}")
        if not 0 <= self.key <= U32_MAX:
            raise BadJoinAnswer(f"key of {where} does not fit in 32 bits")
        if not 1 <= self.slots <= POOL_SLOTS:
            raise BadJoinAnswer(f"granted {self.slots} slots to {where}; expected 1..{POOL_SLOTS}")
        try:
            size_for_lanes(self.lanes)
        except WireError as ex:
            raise BadJoinAnswer(f"{where}: {ex}") from None

    @property
    def size_code(self) -> int:
        return size_for_lanes(self.lanes)

    @classmethod
    def from_json(cls, reply: dict[str, Any], *, job: str, rank: int) -> JoinResult:
        """Read the job API's join answer (a JSON object); raises BadJoinAnswer."""
        try:
            sw = reply["switch"]
            lease, generation = reply.get("lease_seconds"), reply.get("switch_generation")
            return cls(
                job=job,
                job_id=int(reply["job_id"]),
                worker_id=int(reply["worker_id"]),
                world_size=int(reply["world_size"]),
                lanes=int(reply["lanes"]),
                slots=int(reply["slots"]),
                epoch=int(reply["epoch"]),
                switch=SwitchEndpoint(str(sw["mac"]), str(sw["addr"]), int(sw.get("port", AGG_UDP_PORT))),
                rank=rank,
                lease_seconds=None if lease is None else float(lease),
                key=int(reply["key"]),
                switch_generation=None if generation is None else int(generation),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as ex:
            if isinstance(ex, BadJoinAnswer):
                raise
            hint = " (a controller older than wire format v2 sends no key)" if str(ex) == "'key'" else ""
            raise BadJoinAnswer(f"the join answer for job {job!r} rank {rank} is malformed: {ex!r}{hint}") from None


def resolve_token(token: str | None = None, token_file: str | Path | None = None) -> tuple[str, str]:
    """The job API credential and where it came from: ``token``, ``token_file``, $NETAGG_TOKEN,
    $NETAGG_TOKEN_FILE, then the default token file. Raises CredentialError naming the file tried."""
    if token is not None:
        source = "the token given"
    elif token_file is None and os.environ.get(ENV_TOKEN):
        token, source = os.environ[ENV_TOKEN], f"${ENV_TOKEN}"
    else:
        if token_file is not None:
            path, source = Path(token_file), f"token file {token_file}"
        elif os.environ.get(ENV_TOKEN_FILE):
            path = Path(os.environ[ENV_TOKEN_FILE])
            source = f"${ENV_TOKEN_FILE} ({path})"
        else:
            path = default_token_file()
            source = f"the default token file {path}"
        try:
            return read_token(path.expanduser()), source
        except TokenFileError as ex:
            raise CredentialError(
                f"no job API credential: {ex} (give a token file, or set ${ENV_TOKEN} or ${ENV_TOKEN_FILE}; the "
                "controller creates its token file at its first start)"
            ) from None
    try:
        check_token(token.strip(), source)
    except TokenFileError as ex:
        raise CredentialError(f"no job API credential: {ex}") from None
    return token.strip(), source


class ControllerClient:
    """``ControllerClient("127.0.0.1:9590")``; every call has a timeout and raises ControllerClientError.

    The credential is ``token``, else the file ``token_file``, else found as ``resolve_token`` says; a client
    without one fails here, with CredentialError.
    """

    def __init__(self, address: str = f"127.0.0.1:{DEFAULT_API_PORT}", *, timeout: float = 10.0,
                 token: str | None = None, token_file: str | Path | None = None) -> None:
        host, port = parse_address(address.removeprefix("http://"))
        self.url = f"http://{host}:{port}"
        self.timeout = timeout
        self._token, self.credential_source = resolve_token(token, token_file)

    def __repr__(self) -> str:
        return f"ControllerClient({self.url!r}, credential from {self.credential_source})"

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
        """Join a job; blocks until every rank joined (or ``timeout`` passes: JoinTimeout).

        ``lease_seconds``: how long this rank may be silent before the job is torn down (bounded by the
        controller; the answer says what was granted).
        """
        if not math.isfinite(timeout):  # it also bounds the HTTP request: NaN would wait forever
            raise ValueError(f"join timeout {timeout!r} must be a finite number of seconds")
        body = {
            "job": job, "world_size": world_size, "rank": rank, "addr": addr, "port": port, "mac": mac,
            "lanes": lanes, "slots": slots, "timeout": timeout, "lease_seconds": lease_seconds,
        }
        reply = self._request("POST", "/v1/jobs/join", body, timeout + _JOIN_SLACK)
        return JoinResult.from_json(reply, job=job, rank=rank)

    def leave(self, job: str, rank: int) -> dict[str, Any]:
        return self._request("POST", "/v1/jobs/leave", {"job": job, "rank": rank})

    def heartbeat(self, job: str, rank: int) -> dict[str, Any]:
        """Renew the rank's lease; the answer has ``lease_seconds`` and the switch's ``switch_generation``."""
        return self._request("POST", "/v1/jobs/heartbeat", {"job": job, "rank": rank})

    def jobs(self) -> dict[str, Any]:
        return self._request("GET", "/v1/jobs")

    def stats(self, job: str | None = None) -> dict[str, Any]:
        path = "/v1/stats" + (f"?{urllib.parse.urlencode({'job': job})}" if job is not None else "")
        return self._request("GET", path)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as ex:
            try:
                err = json.loads(ex.read())["error"]
                message = err["message"]
                if ex.code == 401:
                    message += f" (this client's credential came from {self.credential_source})"
                raise ControllerClientError(ex.code, err["type"], message) from None
            except (ValueError, KeyError, TypeError):
                raise ControllerClientError(ex.code, "HTTPError", str(ex.reason)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as ex:
            reason = getattr(ex, "reason", ex)
            raise ControllerUnreachable(self.url, str(reason)) from None
