"""The job API for host agents: HTTP/JSON on a ThreadingHTTPServer (routes in docs/controller.md)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import BadRequest, ControllerError, NoSuchRoute, UnknownJob
from .jobs import JobManager, JoinRequest

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9590
#: Largest request body accepted.
_MAX_BODY = 64 * 1024

StatsFn = Callable[[list[Any]], dict[str, Any]]


def parse_address(text: str, default_port: int = DEFAULT_API_PORT) -> tuple[str, int]:
    """'host:port', 'host' or ':port' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return text or DEFAULT_API_HOST, default_port
    if not port.isdigit() or not 0 <= int(port) <= 0xFFFF:
        raise ValueError(f"{text!r} is not host:port")
    return host or DEFAULT_API_HOST, int(port)


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ..., *,
           nullable: bool = False) -> Any:
    if name not in body:
        if default is ...:
            raise BadRequest(f"field '{name}' is required")
        return default
    value = body[name]
    if value is None and nullable:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass, but `"rank": true` is a mistake, not rank 1
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise BadRequest(f"field '{name}' = {value!r} has the wrong type")
    return value


def join_request(body: dict[str, Any]) -> JoinRequest:
    """Validate a join body's shape (admission checks its values)."""
    job = _field(body, "job", str)
    if not job or len(job) > 200:
        raise BadRequest("field 'job' must be a non-empty name of at most 200 characters")
    return JoinRequest(
        job=job,
        world_size=_field(body, "world_size", int),
        rank=_field(body, "rank", int),
        addr=_field(body, "addr", str),
        port=_field(body, "port", int),
        lanes=_field(body, "lanes", int),
        mac=_field(body, "mac", str, None, nullable=True),
        slots=_field(body, "slots", int, None, nullable=True),
        timeout=float(_field(body, "timeout", (int, float), 60.0)),
    )


class ApiServer(ThreadingHTTPServer):
    """Serves the job API for one JobManager; ``stats`` reads the switch's counters for a list of jobs."""

    daemon_threads = True
    # Every rank of a job connects at about the same moment; the default backlog of 5 resets the rest.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], manager: JobManager, stats: StatsFn) -> None:
        self.manager = manager
        self.stats = stats
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a background thread."""
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="netagg-api", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise BadRequest(f"request body of {length} bytes is too large")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            raise BadRequest(f"request body is not JSON: {ex}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _dispatch(self, handler: Callable[[], dict[str, Any]]) -> None:
        try:
            self._send(HTTPStatus.OK, handler())
        except ControllerError as ex:
            self._send(ex.http_status, {"error": {"type": type(ex).__name__, "message": str(ex)}})
        except Exception as ex:  # a bug: answer 500 with what happened instead of dropping the connection
            log.exception("internal error serving %s %s", self.command, self.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": {"type": "InternalError", "message": f"{type(ex).__name__}: {ex}"}})

    def do_POST(self) -> None:
        routes = {"/v1/jobs/join": self._join, "/v1/jobs/leave": self._leave, "/v1/jobs/heartbeat": self._heartbeat}
        route = routes.get(urlsplit(self.path).path)
        if route is None:
            self._dispatch(self._not_found)
            return
        self._dispatch(lambda: route(self._body()))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        routes = {"/v1/jobs": lambda: self._jobs(), "/v1/stats": lambda: self._stats(query)}
        self._dispatch(routes.get(url.path, self._not_found))

    def _not_found(self) -> dict[str, Any]:
        raise NoSuchRoute(self.command, urlsplit(self.path).path)

    # --- routes -----------------------------------------------------------------------------------------------

    def _join(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.server.manager.join(join_request(body)).to_json()

    def _leave(self, body: dict[str, Any]) -> dict[str, Any]:
        job, rank = _field(body, "job", str), _field(body, "rank", int)
        remaining = self.server.manager.leave(job, rank)
        return {"job": job, "rank": rank, "remaining": remaining, "torn_down": remaining == 0}

    def _heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        job, rank = _field(body, "job", str), _field(body, "rank", int)
        self.server.manager.heartbeat(job, rank)
        return {"job": job, "rank": rank, "lease_seconds": self.server.manager.lease_seconds}

    def _jobs(self) -> dict[str, Any]:
        return {"jobs": self.server.manager.describe(), "pool": self.server.manager.pool_view()}

    def _stats(self, query: dict[str, list[str]]) -> dict[str, Any]:
        jobs = self.server.manager.active_jobs()
        wanted = query.get("job")
        if not wanted:
            return self.server.stats(jobs)
        name = wanted[0]
        result = self.server.stats([j for j in jobs if j.name == name])
        if name not in result["jobs"]:  # neither active nor recently finished
            raise UnknownJob(name)
        result["jobs"] = {name: result["jobs"][name]}
        return result
