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

pytestmark = pytest.mark.loopback


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_cli_all_reduces_checks_and_reports(
    dtype: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeSwitch(2, job="cli-job") as switch:
        controller = FakeController(switch)
        monkeypatch.setattr(controller_client, "ControllerClient", lambda address: controller)
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

    monkeypatch.setattr(controller_client, "ControllerClient", lambda address: Refusing())
    code = cli.main(["--job", "x", "--world-size", "3", "--rank", "0", "--size", "16"])
    assert code == 1
    err = capsys.readouterr().err
    assert "rank 0 of job 'x'" in err and "JobMismatch" in err and "Traceback" not in err


def test_cli_text_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeSwitch(1, job="solo") as switch:
        controller = FakeController(switch)
        monkeypatch.setattr(controller_client, "ControllerClient", lambda address: controller)
        assert (
            cli.main(["--job", "solo", "--world-size", "1", "--rank", "0", "--size", "1000", "--check"]) == 0
        )
    out = capsys.readouterr().out
    assert "goodput" in out and "check OK" in out
