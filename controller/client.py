"""Python client of the controller's job API (what the host agent uses). Standard library only."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .api import DEFAULT_API_PORT, parse_address

#: Extra time a join's HTTP request waits beyond the join's own timeout (the server answers at the deadline).
_JOIN_SLACK = 15.0


class ControllerClientError(Exception):
    """The controller answered with an error; ``type`` is the server's error class name (e.g. PoolExhausted)."""

    def __init__(self, status: int, type: str, message: str) -> None:
        self.status, self.type, self.message = status, type, message
        super().__init__(f"{type}: {message} (HTTP {status})")


class ControllerUnreachable(ControllerClientError):
    """No answer from the controller (not running, wrong address, or it did not answer in time)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "ControllerUnreachable", f"controller at {url}: {reason}")


@dataclass(frozen=True, slots=True)
class SwitchEndpoint:
    mac: str
    addr: str
    port: int


@dataclass(frozen=True, slots=True)
class JoinResult:
    job: str
    job_id: int
    worker_id: int
    world_size: int
    lanes: int
    slots: int
    epoch: int
    switch: SwitchEndpoint
    lease_seconds: float
    #: This worker's data-plane key: put in every UPDATE, expected in every RESULT (docs/security.md). A secret,
    #: so it stays out of the repr (and so out of logs and tracebacks that print the result).
    key: int = field(repr=False)


class ControllerClient:
    """``ControllerClient("127.0.0.1:9590")``; every call has a timeout and raises ControllerClientError."""

    def __init__(self, address: str = f"127.0.0.1:{DEFAULT_API_PORT}", *, timeout: float = 10.0) -> None:
        host, port = parse_address(address.removeprefix("http://"))
        self.url = f"http://{host}:{port}"
        self.timeout = timeout

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
    ) -> JoinResult:
        """Join a job; blocks until every rank joined (or ``timeout`` passes: JoinTimeout)."""
        if not math.isfinite(timeout):  # it also bounds the HTTP request: NaN would wait forever
            raise ValueError(f"join timeout {timeout!r} must be a finite number of seconds")
        body = {
            "job": job, "world_size": world_size, "rank": rank, "addr": addr, "port": port, "mac": mac,
            "lanes": lanes, "slots": slots, "timeout": timeout,
        }
        reply = self._request("POST", "/v1/jobs/join", body, timeout + _JOIN_SLACK)
        sw = reply["switch"]
        return JoinResult(
            job=reply["job"],
            job_id=reply["job_id"],
            worker_id=reply["worker_id"],
            world_size=reply["world_size"],
            lanes=reply["lanes"],
            slots=reply["slots"],
            epoch=reply["epoch"],
            switch=SwitchEndpoint(sw["mac"], sw["addr"], sw["port"]),
            lease_seconds=reply["lease_seconds"],
            key=reply["key"],
        )

    def leave(self, job: str, rank: int) -> dict[str, Any]:
        return self._request("POST", "/v1/jobs/leave", {"job": job, "rank": rank})

    def heartbeat(self, job: str, rank: int) -> dict[str, Any]:
        return self._request("POST", "/v1/jobs/heartbeat", {"job": job, "rank": rank})

    def jobs(self) -> dict[str, Any]:
        return self._request("GET", "/v1/jobs")

    def stats(self, job: str | None = None) -> dict[str, Any]:
        path = "/v1/stats" + (f"?{urllib.parse.urlencode({'job': job})}" if job is not None else "")
        return self._request("GET", path)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as ex:
            try:
                err = json.loads(ex.read())["error"]
                raise ControllerClientError(ex.code, err["type"], err["message"]) from None
            except (ValueError, KeyError, TypeError):
                raise ControllerClientError(ex.code, "HTTPError", str(ex.reason)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as ex:
            reason = getattr(ex, "reason", ex)
            raise ControllerUnreachable(self.url, str(reason)) from None
