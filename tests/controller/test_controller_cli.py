"""``netagg-controller``: help texts, and run/jobs/stats against the fake P4Runtime server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netagg.controller.cli import main
from netagg.controller.client import ControllerClient, ControllerClientError

pytestmark = pytest.mark.loopback


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("run", ["--config", "--api-addr", "--p4info", "--bmv2-json", "--connect-timeout", "--lease", "--log-level",
                 "--token-file"]),
        ("stats", ["--api-addr", "--job", "--json", "--token-file"]),
        ("jobs", ["--api-addr", "--json", "--token-file"]),
    ],
)
def test_help_names_every_option(capsys: pytest.CaptureFixture[str], command: str, options: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text


@pytest.mark.parametrize("option", ["--lease", "--connect-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "soon"])
def test_run_refuses_seconds_that_are_not_positive_and_finite(capsys: pytest.CaptureFixture[str], option: str,
                                                              value: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--config", "unused.toml", option, value])
    assert info.value.code == 2
    assert f"argument {option}: {value!r} is not a finite number of seconds > 0" in capsys.readouterr().err


def test_query_without_controller_fails_clearly(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               ) -> None:
    monkeypatch.setenv("NETAGG_TOKEN", "some-token")
    assert main(["jobs", "--api-addr", "127.0.0.1:1"]) == 1
    assert "ControllerUnreachable" in capsys.readouterr().err


def test_query_without_credential_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.token"
    assert main(["stats", "--api-addr", "127.0.0.1:1", "--token-file", str(missing)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"token file {missing} does not exist" in err


def test_a_config_that_is_not_utf8_is_one_line_naming_the_file(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes('[switch]\naddress = "127.0.0.1:1"\n# caf\u00e9\n'.encode("latin-1"))
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"config {config} is not UTF-8 text" in err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_a_bad_lease_in_the_config_is_one_line_naming_file_and_key(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path, value: str) -> None:
    config = tmp_path / "lease.toml"
    config.write_text(f'[switch]\naddress = "127.0.0.1:1"\nudp_mode = true\nagg_port = 9\n\n'
                      f"[jobs]\nlease_seconds = {value}\n")
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"config {config}: [jobs] lease_seconds" in err and "finite number of seconds > 0" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_serves_and_stops_on_sigterm(fake_switch, schema, pipeline, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "topology.toml"
    config.write_text(f"""
[switch]
address = "{fake_switch.address}"
mac = "02:00:00:00:00:fe"
addr = "10.0.0.254"
ports = [1, 2]

[[hosts]]
name = "h1"
mac = "02:00:00:00:00:01"
addr = "10.0.0.1"
port = 1
""")
    api = f"127.0.0.1:{free_port()}"
    token_file = tmp_path / "secrets" / "api.token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "netagg.controller.cli", "run", "--config", str(config), "--api-addr", api,
         "--p4info", str(pipeline[0]), "--bmv2-json", str(pipeline[1]), "--connect-timeout", "20",
         "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        tick = threading.Event()
        while True:
            try:
                client = ControllerClient(api, timeout=2, token_file=token_file)
                client.jobs()
                break
            except ControllerClientError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "controller API did not come up"
                tick.wait(0.1)
        joined = client.join("cli", world_size=1, rank=0, addr="10.0.0.1", port=7000, lanes=32)
        assert joined.job_id == 0
        fake_switch.set_counter(schema, "job_stats", 0, 5, 500)

        # The controller created its token file, readable by its owner only.
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert main(["jobs", "--api-addr", api]) == 1  # no credential found: nothing is sent
        assert "CredentialError" in capsys.readouterr().err
        monkeypatch.setenv("NETAGG_TOKEN", "not-the-token")
        assert main(["jobs", "--api-addr", api]) == 1  # a wrong one: refused
        assert "Unauthorized: the credential sent is not valid" in capsys.readouterr().err
        monkeypatch.delenv("NETAGG_TOKEN")
        monkeypatch.setenv("NETAGG_TOKEN_FILE", str(token_file))
        assert main(["jobs", "--api-addr", api]) == 0
        out = capsys.readouterr().out
        assert "cli: active, id 0, 1 workers, 32 lanes" in out and "rank 0: 10.0.0.1:7000" in out
        assert main(["stats", "--api-addr", api, "--job", "cli", "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["jobs"]["cli"]["aggregated"]["packets"] == 5
        assert main(["stats", "--api-addr", api]) == 0
        table = capsys.readouterr().out
        assert "job cli (id 0, active):" in table and "aggregated" in table

        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        assert "SIGTERM received" in output
        # A clean shutdown is quiet: no warning that the switch connection is down, no task destroyed pending.
        shutdown = output[output.index("SIGTERM received"):]
        assert not [line for line in shutdown.splitlines() if " WARNING " in line or " ERROR " in line], shutdown
        assert "Task was destroyed" not in shutdown and "Traceback" not in shutdown
        assert "P4Runtime connection to" in shutdown and "closed" in shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
