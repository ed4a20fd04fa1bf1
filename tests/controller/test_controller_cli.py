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
        ("run", ["--config", "--api-addr", "--p4info", "--bmv2-json", "--connect-timeout", "--lease", "--log-level"]),
        ("stats", ["--api-addr", "--job", "--json"]),
        ("jobs", ["--api-addr", "--json"]),
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


def test_query_without_controller_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "--api-addr", "127.0.0.1:1"]) == 1
    assert "ControllerUnreachable" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_serves_and_stops_on_sigterm(fake_switch, schema, pipeline, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "netagg.controller.cli", "run", "--config", str(config), "--api-addr", api,
         "--p4info", str(pipeline[0]), "--bmv2-json", str(pipeline[1]), "--connect-timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        client = ControllerClient(api, timeout=2)
        deadline = time.monotonic() + 30
        tick = threading.Event()
        while True:
            try:
                client.jobs()
                break
            except ControllerClientError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "controller API did not come up"
                tick.wait(0.1)
        joined = client.join("cli", world_size=1, rank=0, addr="10.0.0.1", port=7000, lanes=32)
        assert joined.job_id == 0
        fake_switch.set_counter(schema, "job_stats", 0, 5, 500)

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
