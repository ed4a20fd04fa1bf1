"""The generated P4 files are current and describe the payload the Python side sends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from netagg import constants as c
from netagg import p4gen

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("relative", sorted(p4gen.GENERATED_FILES, key=str), ids=str)
def test_committed_file_is_current(repo: Path, relative: Path) -> None:
    committed = (repo / relative).read_text()
    assert committed == p4gen.GENERATED_FILES[relative](), f"{relative} is stale: run `python -m netagg.p4gen`"


def test_check_mode_accepts_the_committed_tree(repo: Path) -> None:
    assert p4gen.main(["--root", str(repo), "--check"]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert p4gen.main(["--root", str(tmp_path)]) == 0
    stale = tmp_path / p4gen.LANES_P4
    stale.write_text(stale.read_text().replace("lane_7,", "lane_8,", 1))
    assert p4gen.main(["--root", str(tmp_path), "--check"]) == 1
    assert str(p4gen.LANES_P4) in capsys.readouterr().err
    assert p4gen.main(["--root", str(tmp_path)]) == 0
    assert p4gen.main(["--root", str(tmp_path), "--check"]) == 0


def test_lane_macros_cover_every_lane_once_in_payload_order() -> None:
    text = p4gen.render_lanes()
    entries = re.findall(r'X\((\d+), (v\d+), (lane_\d+), "\.(lane_\d+)"\)', text)
    assert len(entries) == c.MAX_LANES
    for i, (block, field, reg, name) in enumerate(entries):
        assert int(block) == i // c.LANES_PER_BLOCK
        assert field == f"v{i % c.LANES_PER_BLOCK}"
        assert reg == name == f"lane_{i}"
    blocks = re.search(r"#define NETAGG_BLOCKS\(X\) (.*)", text)
    assert blocks is not None
    assert blocks.group(1).split() == [f"X({b})" for b in range(c.MAX_LANES // c.LANES_PER_BLOCK)]


def test_lane_block_header_has_one_int32_field_per_lane() -> None:
    body = re.search(r"header lanes_h \{(.*?)\}", p4gen.render_lanes(), re.S)
    assert body is not None
    fields = re.findall(r"bit<(\d+)> (\w+);", body.group(1))
    assert fields == [(str(8 * c.LANE_BYTES), f"v{j}") for j in range(c.LANES_PER_BLOCK)]
