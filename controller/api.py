"""The job API for host agents: HTTP/JSON on a ThreadingHTTPServer (routes in docs/controller.md).

Every request needs a credential (``Authorization: Bearer <token>``, ``auth.py``); a job belongs to the credential
of its first join, and only that one may join, heartbeat or leave it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .auth import Authenticator, Tenant
from .errors import BadRequest, ControllerError, NoSuchRoute, RequestTimeout, Unauthorized, UnknownJob
from .jobs import JobManager, JoinRequest

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9590
#: Largest request body accepted.
_MAX_BODY = 64 * 1024
#: Longest a client may take to send a request (each read of the connection), or keep an idle connection open.
REQUEST_TIMEOUT = 30.0

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
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
        raise BadRequest(f"field '{name}' = {value!r} must be a finite number")
    return value


def _no_constant(name: str) -> Any:
    """json.loads hook for NaN, Infinity and -Infinity, which Python accepts but JSON does not have."""
    raise BadRequest(f"request body holds {name}, which is not a JSON number; numbers must be finite")


def join_request(body: dict[str, Any], owner: str = "") -> JoinRequest:
    """Validate a join body's shape (admission checks its values); ``owner`` names the request's credential."""
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
        lease_seconds=_field(body, "lease_seconds", (int, float), None, nullable=True),
        owner=owner,
    )


class ApiServer(ThreadingHTTPServer):
    """Serves the job API for one JobManager; ``stats`` reads the switch's counters for a list of jobs."""

    daemon_threads = True
    # Every rank of a job connects at about the same moment; the default backlog of 5 resets the rest.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], manager: JobManager, stats: StatsFn, *,
                 tenants: Sequence[Tenant], request_timeout: float = REQUEST_TIMEOUT) -> None:
        """``tenants``: the credentials accepted (at least one); each job belongs to the one that created it."""
        self.manager = manager
        self.stats = stats
        self.auth = Authenticator(tenants)
        self.request_timeout = request_timeout
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints the traceback to stderr; keep it in the log with everything else.
        log.exception("error serving %s", client_address)

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

    def setup(self) -> None:
        # A socket timeout for every read and write: a client that stops sending (a half-sent request, a
        # Content-Length larger than its body, an idle keep-alive connection) cannot hold a thread forever.
        # A join waits for the other ranks without reading the socket, so it is not cut short by this.
        self.timeout = self.server.request_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def handle_one_request(self) -> None:
        self.command = None  # on a kept-alive connection, not the previous request's
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as ex:
            # The client went away or stalled (for a join, possibly after giving up waiting): nothing to answer,
            # and nothing wrong with the controller. One line, no traceback.
            what = f"{self.command} {self.path}" if getattr(self, "command", None) else "a request"
            log.info("client %s: connection closed during %s (%s)", self.address_string(), what,
                     type(ex).__name__)
            self.close_connection = True

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="netagg"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        # Until the body is read the connection cannot carry another request: close it after any refusal here.
        self.close_connection = True
        if "Transfer-Encoding" in self.headers:
            raise BadRequest("send the request body with a Content-Length, not a Transfer-Encoding")
        text = self.headers.get("Content-Length", "0").strip()
        if not (text.isascii() and text.isdigit()):
            raise BadRequest(f"Content-Length {text[:40]!r} is not a byte count")
        # Length first: int() refuses strings of thousands of digits with a ValueError of its own.
        if len(text) > len(str(_MAX_BODY)) or int(text) > _MAX_BODY:
            raise BadRequest(f"request body of {text[:40]} bytes is too large (at most {_MAX_BODY})")
        length = int(text)
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            raise RequestTimeout(self.server.request_timeout) from None
        if len(raw) < length:
            raise BadRequest(f"request body ended after {len(raw)} of {length} bytes")
        self.close_connection = False
        try:
            body = json.loads(raw or b"{}", parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError) as ex:
            raise BadRequest(f"request body is not JSON: {ex}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _tenant(self) -> Tenant:
        """The credential of this request; raises Unauthorized (and closes the connection: the body is unread)."""
        header = self.headers.get("Authorization")
        tenant = self.server.auth.tenant(header)
        if tenant is None:
            self.close_connection = True
            log.info("client %s: %s %s refused: %s credential", self.address_string(), self.command,
                     urlsplit(self.path).path, "invalid" if header else "no")
            raise Unauthorized(given=header is not None)
        return tenant

    def _dispatch(self, handler: Callable[[], dict[str, Any]]) -> None:
        try:
            status, payload = HTTPStatus.OK, handler()
        except ControllerError as ex:
            status, payload = ex.http_status, {"error": {"type": type(ex).__name__, "message": str(ex)}}
        except Exception as ex:  # a bug: answer 500 with what happened instead of dropping the connection
            log.exception("internal error serving %s %s", self.command, self.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            payload = {"error": {"type": "InternalError", "message": f"{type(ex).__name__}: {ex}"}}
        # Outside the handlers' try: a client that left makes this raise, which is not an internal error.
        self._send(status, payload)

    def do_POST(self) -> None:
        routes = {"/v1/jobs/join": self._join, "/v1/jobs/leave": self._leave, "/v1/jobs/heartbeat": self._heartbeat}
        route = routes.get(urlsplit(self.path).path)

        def handle() -> dict[str, Any]:
            tenant = self._tenant()  # before anything else: no route, body or job is looked at without it
            if route is None:
                self._not_found()
            return route(self._body(), tenant)

        self._dispatch(handle)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        routes = {"/v1/jobs": self._jobs, "/v1/stats": lambda _: self._stats(query)}
        route = routes.get(url.path)

        def handle() -> dict[str, Any]:
            tenant = self._tenant()
            if route is None:
                self._not_found()
            return route(tenant)

        self._dispatch(handle)

    def _not_found(self) -> dict[str, Any]:
        raise NoSuchRoute(self.command, urlsplit(self.path).path)

    # --- routes -----------------------------------------------------------------------------------------------

    def _join(self, body: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
        return self.server.manager.join(join_request(body, tenant.name)).to_json()

    def _leave(self, body: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
        job, rank = _field(body, "job", str), _field(body, "rank", int)
        remaining = self.server.manager.leave(job, rank, tenant.name)
        return {"job": job, "rank": rank, "remaining": remaining, "torn_down": remaining == 0}

    def _heartbeat(self, body: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
        job, rank = _field(body, "job", str), _field(body, "rank", int)
        manager = self.server.manager
        lease = manager.heartbeat(job, rank, tenant.name)
        return {"job": job, "rank": rank, "lease_seconds": lease, "switch_generation": manager.switch_generation}

    def _jobs(self, tenant: Tenant) -> dict[str, Any]:
        return {"jobs": self.server.manager.describe(viewer=tenant.name), "pool": self.server.manager.pool_view()}

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
