"""The CSER reproduction's --quick mode end to end: it trains every method, measures and writes its report and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import repro_cser

pytestmark = pytest.mark.unit


def test_quick_reproduction_writes_a_complete_report(tmp_path: Path) -> None:
    assert repro_cser.main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "cser.md").read_text()
    assert "Full SGD:" in report
    for method in repro_cser.METHODS:
        assert f"| {method} |" in report
    assert (tmp_path / "cser_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads((tmp_path / "cser.json").read_text())
    assert min(figures["sgd"]) > 0.8  # 120 steps of full SGD learn the digits far above chance (10 %)
    for method, per_ratio in figures["results"].items():
        assert set(per_ratio) == {"16", "64"}, method
        for ratio, runs in per_ratio.items():
            # Measured ratios: blocks rounded to whole elements; local SGD syncs once in 120 steps at ratio 64.
            assert all(0.9 * int(ratio) < r["ratio"] < 2 * int(ratio) for r in runs), (method, ratio, runs)
    # CSER keeps full SGD's accuracy at both ratios (within a few points).
    assert all(r["accuracy"] > min(figures["sgd"]) - 0.05 for runs in figures["results"]["CSER"].values() for r in runs)
