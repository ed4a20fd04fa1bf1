"""The ALQ/AMQ reproduction's --quick mode end to end: it trains, measures and writes its report and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples import repro_alq

pytestmark = pytest.mark.unit


def test_quick_reproduction_writes_a_complete_report(tmp_path: Path) -> None:
    assert repro_alq.main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "alq.md").read_text()
    for scheme in ("SGD", *repro_alq.SCHEMES):
        assert f"| {scheme} |" in report
    for png in ("alq_variance.png", "alq_accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads((tmp_path / "alq.json").read_text())
    assert set(figures["variance"]) == set(repro_alq.SCHEMES)
    for scheme, per_bucket in figures["variance"].items():
        assert all(0 < v < 100 for v in per_bucket.values()), (scheme, per_bucket)
    # Even two epochs of 3-bit training learn the digits far above chance (10 %).
    assert all(min(acc) > 0.5 for acc in figures["accuracy"].values()), figures["accuracy"]
