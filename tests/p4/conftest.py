"""Fixtures of the P4 tests: the repository root and the committed v1model artifacts, parsed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from p4info_contract import committed_bmv2_json, committed_p4info

from netagg.artifacts import REPO_ROOT


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def p4info() -> p4i.P4Info:
    """The committed P4Info of the v1model program."""
    return committed_p4info()


@pytest.fixture(scope="session")
def bmv2_json() -> dict[str, Any]:
    """The committed BMv2 JSON of the v1model program."""
    return json.loads(committed_bmv2_json())
