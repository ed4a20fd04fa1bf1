"""The PowerSGD reproduction's --quick mode end to end, through a software switch: 4 workers, every configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import repro_powersgd

pytestmark = pytest.mark.loopback


def test_quick_reproduction_through_the_switch(tmp_path: Path) -> None:
    assert repro_powersgd.main(["--quick", "--backend", "netagg", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "powersgd.md").read_text()
    for config in repro_powersgd.CONFIGS:
        assert f"| {config.name} |" in report
    assert (tmp_path / "powersgd_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tmp_path / "powersgd.json").read_text())["results"]
    ratio = {name: runs[0]["ratio"] for name, runs in results.items()}
    sent = {name: runs[0]["bytes_per_step"] for name, runs in results.items()}
    assert ratio["all-reduce"] == 1 and sent["all-reduce"] == 4 * 50826  # the MLP's parameters, float32
    # Lower rank, fewer bytes; the ablations send what rank 2 sends.
    assert ratio["rank 1"] > ratio["rank 2"] > ratio["rank 4"] > 5
    assert sent["rank 2, no error feedback"] == sent["rank 2, no warm start"] == sent["rank 2"]
    for name, runs in results.items():
        assert runs[0]["switch_results"] > runs[0]["steps"], f"{name}: not every step went through the switch"
        if name != "rank 2, no error feedback":
            assert runs[0]["accuracy"] > 0.5, name  # two epochs learn the digits far above chance (10 %)
