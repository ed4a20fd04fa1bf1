"""The tests' P4Info contract (``p4info_contract``) says what the table "P4Info names" of docs/protocol.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from p4info_contract import ACTIONS, COUNTERS, TABLES

from netagg import constants as c

pytestmark = pytest.mark.unit


def _rows(repo: Path) -> list[tuple[str, str, str]]:
    """(kind, name, keys / params) of each row of the table."""
    section = (repo / "docs" / "protocol.md").read_text().split("## P4Info names", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            kind, name, spec = (cell.strip() for cell in line.strip("|").split("|"))
            rows.append((kind, name.strip("`"), spec))
    assert rows[0] == ("kind", "name", "keys / params"), "the table's layout changed"
    return rows[1:]


def _fields(spec: str) -> tuple[tuple[str, int], ...]:
    """'mac 48, addr 32' -> (("mac", 48), ("addr", 32))."""
    return tuple((name, int(bits)) for name, bits in re.findall(r"(\w+) (\d+)", spec))


def test_tables_and_their_keys(repo: Path) -> None:
    documented = {
        name: tuple((key, int(bits)) for key, bits in re.findall(r"`(\w+)` exact (\d+)", spec))
        for kind, name, spec in _rows(repo)
        if kind.startswith("table")
    }
    assert documented == {name: table.keys for name, table in TABLES.items()}


def test_action_parameters(repo: Path) -> None:
    documented = {}
    for kind, name, spec in _rows(repo):
        if kind == "action":
            documented[name] = _fields(spec.replace("`", ""))
        elif kind.startswith("table"):  # actions written inline: `forward(port 9)`
            for action, params in re.findall(r"`(\w+)\(([^)]*)\)`", spec):
                documented[action] = _fields(params)
    without_params = {action for _, _, spec in _rows(repo) for action in re.findall(r"default `(\w+)`", spec)}
    assert documented == {name: params for name, params in ACTIONS.items() if params}
    assert without_params == {name for name, params in ACTIONS.items() if not params}


def test_counter_sizes(repo: Path) -> None:
    documented = {}
    for kind, name, spec in _rows(repo):
        if kind == "counter":
            factors = re.search(r"size `([^`]+)`", spec).group(1).split(" * ")
            size = 1
            for factor in factors:
                size *= getattr(c, factor)
            documented[name] = size
    assert documented == COUNTERS


def test_documented_defaults(repo: Path) -> None:
    """Where the table names a default action, it is the contract's initial default."""
    for kind, name, spec in _rows(repo):
        match = re.search(r"default (?:action )?`(\w+)", spec)
        if kind.startswith("table") and match:
            assert TABLES[name].default == match.group(1), name
            assert not TABLES[name].const_default, name
