"""``netagg-agent`` in process, with the controller client replaced by the fake switch's job API."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from agent_harness import run_ranks
from fake_agg_switch import FakeController, FakeSwitch

import netagg.controller.client as controller_client
from netagg.host_agent import cli
from netagg.host_agent import quantize as q
from netagg.host_agent.collective import DEFAULT_NAME, ENCODING_BFP, ENCODING_INT32X2, Collective
from netagg.wire import HEADER_BYTES, LANE_DTYPE, unpack_header

pytestmark = pytest.mark.loopback


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_cli_all_reduces_checks_and_reports(
    dtype: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeSwitch(2, job="cli-job") as switch:
        controller = FakeController(switch)
        monkeypatch.setattr(controller_client, "ControllerClient", lambda address, **_: controller)
        argv = ["--job", "cli-job", "--world-size", "2", "--size", "40000", "--iterations", "2", "--check",
                "--json", "--dtype", dtype, "--loss", "0.02", "--window", "16"]  # fmt: skip
        codes = run_ranks([None, None], lambda rank, _: cli.main([*argv, "--rank", str(rank)]))  # type: ignore[list-item]
    assert codes == [0, 0]
    reports = sorted(
        (json.loads(line) for line in capsys.readouterr().out.splitlines()), key=lambda r: r["rank"]
    )
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["check"]["ok"] and report["window"] == 16 and report["bytes"] == 40000
        assert report["goodput_MBps"] > 0 and report["dropped_on_purpose"] > 0
        assert report["digest"] == _reference_digest(dtype, 2, 40000 // 4, switch.lanes)


def _reference_digest(dtype: str, world_size: int, count: int, lanes: int) -> str:
    """The exact bits the all-reduce must give: every rank's input quantized with the shared exponents, summed
    as int32 and dequantized, computed here with the quantizer alone."""
    inputs = [cli.rank_data(0, rank, count, dtype, world_size) for rank in range(world_size)]
    if dtype == "int32":
        result = np.sum(inputs, axis=0, dtype=np.int32)
    else:
        m = -(-count // lanes)
        blocks = np.zeros((world_size, m * lanes), np.float32)
        for rank, x in enumerate(inputs):
            blocks[rank, :count] = x
        blocks = blocks.reshape(world_size, m, lanes)
        shared = np.max([q.block_exponents(b)[0].astype(np.int16) for b in blocks], axis=0)
        sums = np.sum([q.quantize(b, shared, world_size) for b in blocks], axis=0, dtype=np.int32)
        result = q.dequantize(sums, shared, world_size).reshape(-1)[:count]
    return hashlib.sha256(np.ascontiguousarray(result).tobytes()).hexdigest()


def test_cli_reports_a_join_failure_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Refusing:
        def join(self, *args: object, **kwargs: object) -> None:
            raise controller_client.ControllerClientError(409, "JobMismatch", "world size 3 differs from 2")

    monkeypatch.setattr(controller_client, "ControllerClient", lambda address, **_: Refusing())
    code = cli.main(["--job", "x", "--world-size", "3", "--rank", "0", "--size", "16"])
    assert code == 1
    err = capsys.readouterr().err
    assert "rank 0 of job 'x'" in err and "JobMismatch" in err and "Traceback" not in err


def test_cli_text_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeSwitch(1, job="solo") as switch:
        controller = FakeController(switch)
        monkeypatch.setattr(controller_client, "ControllerClient", lambda address, **_: controller)
        assert (
            cli.main(["--job", "solo", "--world-size", "1", "--rank", "0", "--size", "1000", "--check"]) == 0
        )
    out = capsys.readouterr().out
    assert "goodput" in out and "check OK" in out


# -- bad option values: one line naming the option, exit status 2, before anything is contacted or allocated ---

_BASE = {"--job": "j", "--world-size": "2", "--rank": "0", "--size": "64"}


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--size", "10000000000000", "memory"),  # was a numpy MemoryError traceback
        ("--size", "2", "at least 4"),
        ("--size", "10", "multiple of 4"),
        ("--size", "many", "not an integer"),
        ("--seed", "-1", "0..4294967295"),  # was a numpy ValueError traceback
        ("--seed", str(1 << 32), "0..4294967295"),
        ("--deadline", "nan", "finite"),  # was accepted, then an empty TimeoutError
        ("--deadline", "inf", "finite"),
        ("--deadline", "0", "> 0"),
        ("--join-timeout", "nan", "finite"),
        ("--join-timeout", "-1", "> 0"),
        ("--window", "0", "1..1024"),  # was silently replaced by the default
        ("--window", "1025", "1..1024"),
        ("--loss", "1", "[0, 1)"),
        ("--loss", "nan", "[0, 1)"),
        ("--iterations", "0", "at least 1"),
        ("--world-size", "0", "1..32"),
        ("--world-size", "33", "1..32"),
        ("--rank", "-1", "at least 0"),  # was a numpy ValueError traceback
        ("--rank", "2", "0..1"),
        ("--bind", "localhost", "IPv4 address"),
        ("--bind", "0.0.0.0", "not a wildcard"),
        ("--controller", "127.0.0.1:99999", "HOST:PORT"),  # was a ValueError traceback
        ("--controller", "127.0.0.1:0", "HOST:PORT"),
    ],
)
def test_cli_rejects_a_bad_value_in_one_line_naming_the_option(
    option: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_controller(address: str, **_: object) -> None:
        raise AssertionError("a bad option must be refused before the controller is contacted")

    monkeypatch.setattr(controller_client, "ControllerClient", no_controller)
    argv = [item for key, default in {**_BASE, option: value}.items() for item in (key, default)]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("netagg-agent: error:")]
    assert len(error_lines) == 1, err
    assert option in error_lines[0] and says in error_lines[0], err
    assert "Traceback" not in err


def test_cli_size_error_says_how_much_memory_it_would_take(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([*(item for pair in _BASE.items() for item in pair), "--size", "10000000000000", "--check"])
    err = capsys.readouterr().err
    assert "TiB" in err and "available" in err, err


# -- --check verifies every iteration -------------------------------------------------------------------------


class _CorruptingSwitch(FakeSwitch):
    """Flips bit 20 of the first lane of every RESULT of one collective (by its op id): a wrong sum, sent to all."""

    def __init__(self, num_workers: int, corrupt_op: int, **kwargs: object) -> None:
        super().__init__(num_workers, **kwargs)  # type: ignore[arg-type]
        self.corrupt_op = corrupt_op

    def outgoing(self, datagram: bytes) -> bytes:
        if unpack_header(datagram).op != self.corrupt_op:
            return datagram
        buf = bytearray(datagram)
        lanes = np.frombuffer(buf, dtype=LANE_DTYPE, offset=HEADER_BYTES)
        lanes[0] ^= 1 << 20
        self.counters["corrupted"] += 1
        return bytes(buf)


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_cli_check_catches_a_wrong_result_in_a_timed_iteration(
    dtype: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    size, count = 4096, 1024
    encoding = ENCODING_INT32X2 if dtype == "int32" else ENCODING_BFP
    chunks = count * (2 if dtype == "int32" else 1) // 256  # one wrong element per chunk (its first lane)
    # The client's all-reduce #2: the second timed iteration (#0 is the untimed, reference-checked one).
    bad = Collective(DEFAULT_NAME, 2, count, dtype, encoding).op_id
    with _CorruptingSwitch(2, bad, job="cli-job") as switch:
        controller = FakeController(switch)
        monkeypatch.setattr(controller_client, "ControllerClient", lambda address, **_: controller)
        argv = ["--job", "cli-job", "--world-size", "2", "--size", str(size), "--iterations", "3", "--check",
                "--json", "--dtype", dtype]  # fmt: skip
        codes = run_ranks([None, None], lambda rank, _: cli.main([*argv, "--rank", str(rank)]))  # type: ignore[list-item]
        assert switch.counters["corrupted"] > 0
    assert codes == [1, 1]
    out, err = capsys.readouterr()
    reports = [json.loads(line) for line in out.splitlines()]
    assert len(reports) == 2
    for report in reports:
        check = report["check"]
        assert not check["ok"] and check["results_checked"] == 4, check
        assert check["error"].startswith(f"iteration 2 (timed): {chunks} of 1024 elements differ"), check
        # The untimed result was right: its digest is still the reference's.
        assert report["digest"] == _reference_digest(dtype, 2, count, switch.lanes)
    for rank in (0, 1):
        assert f"netagg-agent: rank {rank} of job 'cli-job': --check failed: iteration 2" in err, err
