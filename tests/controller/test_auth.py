"""The job API's credential: token files, the client's lookup, 401 without it, jobs bound to their creator."""

from __future__ import annotations

import json
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api import TOKEN, Service, join_ranks, poll

from netagg.controller.auth import Authenticator, Tenant, TokenFileError, load_or_create_token, read_token
from netagg.controller.client import ControllerClient, ControllerClientError, CredentialError, JoinResult

# --- token files and the client's lookup (no network) -----------------------------------------------------------


@pytest.mark.unit
def test_the_token_file_is_created_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "controller.token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_token(path) == (token, False)  # a restart keeps the credential
    assert read_token(path) == token


@pytest.mark.unit
def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.token"
    path.write_text("secret\n")
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match=f"token file {path} is readable by others .*chmod 600"):
        read_token(path)
    with pytest.raises(TokenFileError, match="readable by others"):
        load_or_create_token(path)  # never silently replaced either
    path.chmod(0o600)
    path.write_text("two words\n")
    with pytest.raises(TokenFileError, match="does not hold a token"):
        read_token(path)


@pytest.mark.unit
def test_the_client_finds_its_credential_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  own_credentials: Path) -> None:
    def file(name: str, token: str) -> Path:
        path = tmp_path / name
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path

    default = own_credentials
    default.parent.mkdir(parents=True)
    default.write_text("from-default\n")
    default.chmod(0o600)
    assert ControllerClient("127.0.0.1:1").credential_source == f"the default token file {default}"
    monkeypatch.setenv("NETAGG_TOKEN_FILE", str(file("env.token", "from-env-file")))
    assert "NETAGG_TOKEN_FILE" in ControllerClient("127.0.0.1:1").credential_source
    monkeypatch.setenv("NETAGG_TOKEN", "from-env")
    assert ControllerClient("127.0.0.1:1").credential_source == "$NETAGG_TOKEN"
    given = file("given.token", "from-given-file")
    assert ControllerClient("127.0.0.1:1", token_file=given).credential_source == f"token file {given}"
    assert ControllerClient("127.0.0.1:1", token="x", token_file=given).credential_source == "the token given"
    assert "from-" not in repr(ControllerClient("127.0.0.1:1"))


@pytest.mark.unit
def test_a_client_without_credential_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    own_credentials: Path) -> None:
    with pytest.raises(CredentialError, match=f"token file {own_credentials} does not exist"):
        ControllerClient("127.0.0.1:1")
    monkeypatch.setenv("NETAGG_TOKEN_FILE", str(tmp_path / "missing.token"))
    with pytest.raises(CredentialError, match=f"token file {tmp_path / 'missing.token'} does not exist"):
        ControllerClient("127.0.0.1:1")
    unreadable = tmp_path / "folder.token"
    unreadable.mkdir(mode=0o700)
    with pytest.raises(CredentialError, match=f"cannot read token file {unreadable}"):
        ControllerClient("127.0.0.1:1", token_file=unreadable)


@pytest.mark.unit
def test_authenticator_checks_every_tenant() -> None:
    auth = Authenticator([Tenant("a", "alpha-token"), Tenant("b", "beta-token")])
    assert auth.tenant("Bearer alpha-token").name == "a"
    assert auth.tenant("bearer beta-token").name == "b"
    for header in (None, "", "Bearer", "Bearer alpha", "Basic alpha-token", "alpha-token", "Bearer beta-token2"):
        assert auth.tenant(header) is None, header
    assert "alpha" not in repr(auth.tenants)
    with pytest.raises(ValueError, match="at least one"):
        Authenticator([])


# --- the job API over HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def service(topology) -> Iterator[Service]:
    svc = Service(topology)
    yield svc
    svc.close()


def _raw(service: Service, method: str, path: str, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(service.server.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read()), ex.headers


@pytest.mark.loopback
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_every_route_needs_a_credential(service: Service, headers: dict[str, str]) -> None:
    join_ranks(service.client, "j", 1)
    join = {"job": "k", "world_size": 1, "rank": 0, "addr": "10.0.0.1", "port": 7000, "lanes": 64}
    for method, path, body in (("POST", "/v1/jobs/join", join), ("POST", "/v1/jobs/heartbeat", {"job": "j", "rank": 0}),
                               ("POST", "/v1/jobs/leave", {"job": "j", "rank": 0}), ("GET", "/v1/jobs", None),
                               ("GET", "/v1/stats", None), ("GET", "/v1/stats?job=j", None),
                               ("GET", "/v1/nothing", None)):
        status, answer, reply_headers = _raw(service, method, path, body, headers)
        assert status == 401 and answer["error"]["type"] == "Unauthorized", (method, path, answer)
        assert reply_headers["WWW-Authenticate"].startswith("Bearer")
        # Nothing about jobs or workers in a refusal.
        assert "10.0.0" not in json.dumps(answer) and "7000" not in json.dumps(answer)
    assert [j["job"] for j in service.manager.describe()] == ["j"]  # nothing joined, nothing left
    assert service.manager.describe()[0]["workers"][0]["left"] is False


@pytest.mark.loopback
def test_a_wrong_token_says_where_the_client_took_it(service: Service) -> None:
    with pytest.raises(ControllerClientError) as info:
        ControllerClient(service.address, token="not-it").jobs()
    assert info.value.status == 401 and "credential sent is not valid" in info.value.message
    assert "came from the token given" in info.value.message


@pytest.mark.loopback
def test_a_job_belongs_to_the_credential_that_created_it(service: Service) -> None:
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(service.client.join(
        "mine", world_size=2, rank=0, addr="10.0.0.1", port=6000, lanes=64, timeout=20)))
    first.start()
    poll(lambda: service.manager.describe() != [])
    # Another tenant cannot take the pending job's missing rank (and so receive the others' sums) ...
    with pytest.raises(ControllerClientError) as info:
        service.other.join("mine", world_size=2, rank=1, addr="10.0.0.2", port=6001, lanes=64, timeout=5)
    assert (info.value.status, info.value.type) == (403, "NotJobOwner")
    assert "created with another credential" in info.value.message
    service.client.join("mine", world_size=2, rank=1, addr="10.0.0.2", port=6001, lanes=64, timeout=5)
    first.join(20)
    assert isinstance(results[0], JoinResult)
    # ... nor make a rank leave, keep the job alive with heartbeats, or join it again.
    for call in (lambda: service.other.leave("mine", 0), lambda: service.other.heartbeat("mine", 1),
                 lambda: service.other.join("mine", world_size=2, rank=0, addr="10.0.0.3", port=1, lanes=64)):
        with pytest.raises(ControllerClientError) as info:
            call()
        assert (info.value.status, info.value.type) == (403, "NotJobOwner")
    assert not any(w["left"] for w in service.manager.describe()[0]["workers"])
    # The other tenant sees the job, not where its workers are; the owner sees everything.
    (theirs,) = service.other.jobs()["jobs"]
    assert theirs["job"] == "mine" and all("addr" not in w and "port" not in w for w in theirs["workers"])
    (own,) = service.client.jobs()["jobs"]
    assert [(w["addr"], w["port"]) for w in own["workers"]] == [("10.0.0.1", 6000), ("10.0.0.2", 6001)]
    assert service.client.leave("mine", 0)["remaining"] == 1


# --- leases asked for at join, the switch generation ------------------------------------------------------------


@pytest.mark.loopback
@pytest.mark.parametrize(("asked", "granted"), [(None, 30.0), (1, 1.0), (2.5, 2.5), (0.01, 0.5), (600, 30.0)])
def test_the_lease_asked_for_is_bounded_and_answered(service: Service, asked: float | None, granted: float) -> None:
    (result,) = join_ranks(service.client, "leased", 1, lease_seconds=asked)
    assert result.lease_seconds == granted
    assert service.client.heartbeat("leased", 0)["lease_seconds"] == granted


@pytest.mark.loopback
@pytest.mark.parametrize("asked", [0, -1, float("nan"), float("inf")])
def test_a_lease_that_is_not_positive_and_finite_is_refused(service: Service, asked: float) -> None:
    (result,) = join_ranks(service.client, "bad-lease", 1, lease_seconds=asked)
    assert isinstance(result, ControllerClientError) and result.status == 400
    assert "lease_seconds" in result.message or "finite" in result.message
    assert service.manager.describe() == []


@pytest.mark.loopback
def test_a_silent_worker_with_a_short_lease_frees_its_job_within_two_seconds(topology) -> None:
    svc = Service(topology, lease=30.0)
    try:
        svc.manager.start_reaper()
        (result,) = join_ranks(svc.client, "short", 1, lease_seconds=1.0)
        joined = time.monotonic()
        assert result.lease_seconds == 1.0
        poll(lambda: svc.manager.describe() == [], timeout=5)
        assert time.monotonic() - joined < 2.0
        assert ("remove", "short") in svc.recorder.calls
        with pytest.raises(ControllerClientError, match="rank 0 was silent for 1.* s \\(lease 1 s\\)"):
            svc.client.heartbeat("short", 0)
    finally:
        svc.close()


@pytest.mark.loopback
def test_join_and_heartbeat_answers_carry_the_switch_generation(service: Service) -> None:
    service.generation = 7
    (result,) = join_ranks(service.client, "gen", 1)
    assert result.switch_generation == 7
    assert service.client.heartbeat("gen", 0)["switch_generation"] == 7
    service.generation = 8  # the switch restarted and got its pipeline pushed again
    assert service.client.heartbeat("gen", 0)["switch_generation"] == 8
