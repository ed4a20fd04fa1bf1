"""``netagg-softswitch``: argument handling in process, and the real command in UDP mode on loopback."""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc

from netagg.softswitch.cli import build_parser, main
from netagg.softswitch.ports import parse_port_spec

PROGRAM = Path(sys.executable).parent / "netagg-softswitch"
DEADLINE_S = 15.0


@pytest.mark.unit
def test_defaults_match_simple_switch_grpc() -> None:
    args = build_parser().parse_args([])
    assert (args.device_id, args.grpc_server_addr, args.udp, args.interface) == (
        1,
        "127.0.0.1:9559",
        None,
        [],
    )
    args = build_parser().parse_args(["--udp", "-i", "1@a", "-i", "2@b", "--seed", "7"])
    assert args.udp == ("127.0.0.1", 48864) and args.interface == [(1, "a"), (2, "b")] and args.seed == 7
    assert (
        build_parser().parse_args(["--grpc-server-addr", "unix:/x/y.sock"]).grpc_server_addr
        == "unix:/x/y.sock"
    )


@pytest.mark.unit
def test_help_says_what_every_option_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("-i PORT@IFACE", "--udp", "--device-id", "--grpc-server-addr", "--seed", "--log-level",
                   "--tls-cert", "--tls-key", "--tls-client-ca"):  # fmt: skip
        assert option in text
    assert "UDP mode" in text and "port 1" in text


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv, message",
    [
        (["-i", "veth0"], "PORT@IFACE"),
        (["-i", "600@veth0"], "9 bits"),
        (["--device-id", "0"], "1..18446744073709551615"),
        (["--device-id", str(2**64)], "a uint64"),
        (["--seed", "-1"], "0..4294967295"),
        (["--seed", "x"], "0..4294967295"),
        (["--tls-cert", "c.pem"], "go together"),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
        (["--grpc-server-addr", "9559"], "HOST:PORT or unix:/path"),
        (["--grpc-server-addr", "unix:"], "needs a path"),
        (["--udp", "127.0.0.1"], "HOST:PORT"),
        (["--udp", "127.0.0.1:1", "-i", "1@veth0"], "exclusive"),
        (["-i", "1@veth0", "-i", "1@veth1"], "port 1 is given more than once"),  # was: 1@veth0 silently dropped
        (["-i", "1@veth0", "-i", "2@veth0"], "interface veth0 is given for more than one port"),  # was a traceback
    ],
)
def test_bad_arguments_are_clear_usage_errors(argv: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.unit
def test_port_spec_parsing() -> None:
    assert parse_port_spec("1@veth0") == (1, "veth0")
    assert parse_port_spec("511@x") == (511, "x")
    for bad in ("veth0", "1@", "@veth0", "x@veth0", "512@veth0", "1@" + "a" * 16):
        with pytest.raises(ValueError):
            parse_port_spec(bad)


def start(*argv: str) -> tuple[subprocess.Popen[str], str]:
    """Start the command; return it and its readiness line (or raise with its output)."""
    proc = subprocess.Popen([str(PROGRAM), *argv], stderr=subprocess.PIPE, text=True, start_new_session=True)
    ready, _, _ = select.select([proc.stderr], [], [], DEADLINE_S)
    line = proc.stderr.readline() if ready else ""  # type: ignore[union-attr]
    if "ready" not in line:
        proc.kill()
        rest = proc.communicate(timeout=DEADLINE_S)[1]
        raise AssertionError(f"no readiness line: {line}{rest}")
    return proc, line


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE_S)


@pytest.mark.loopback
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_udp_mode_serves_p4runtime_and_stops_cleanly(sig: signal.Signals) -> None:
    proc, line = start(
        "--udp",
        "127.0.0.1:0",
        "--grpc-server-addr",
        "127.0.0.1:0",
        "--device-id",
        "3",
        "--log-level",
        "warning",
    )
    try:
        match = re.search(r"P4Runtime on (\S+), UDP 127\.0\.0\.1:(\d+) as port 1", line)
        assert match, line
        with grpc.insecure_channel(match.group(1)) as channel:
            grpc.channel_ready_future(channel).result(timeout=DEADLINE_S)
            reply = p4r_grpc.P4RuntimeStub(channel).Capabilities(
                p4r.CapabilitiesRequest(), timeout=DEADLINE_S
            )
            assert reply.p4runtime_api_version
        # No pipeline yet: a datagram is dropped, not answered, and does not disturb the switch.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00" * 138, ("127.0.0.1", int(match.group(2))))
    finally:
        code = stop(proc, sig)
    assert code == 0


@pytest.mark.loopback
def test_udp_port_in_use_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(PROGRAM), "--udp", f"127.0.0.1:{port}", "--grpc-server-addr", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
    assert done.returncode == 1
    assert f"UDP 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr


@pytest.mark.loopback
def test_grpc_address_in_use_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [str(PROGRAM), "--udp", "127.0.0.1:0", "--grpc-server-addr", address],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
    assert done.returncode == 1
    assert f"netagg-softswitch: P4Runtime server cannot bind {address}" in done.stderr
    assert "netagg-softswitch ready" not in done.stderr


@pytest.mark.unit
def test_unreadable_tls_file_is_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "server.pem"
    code = main(["--tls-cert", str(missing), "--tls-key", str(tmp_path / "server.key"),
                 "--grpc-server-addr", "127.0.0.1:0"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"netagg-softswitch: cannot read the TLS certificate {missing}: No such file or directory"
