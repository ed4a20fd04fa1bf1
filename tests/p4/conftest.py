"""Fixtures of the P4 tests: the repository root and the committed v1model artifacts, parsed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

REPO = Path(__file__).resolve().parents[2]
#: The artifacts `make -C p4` writes, relative to the repository root.
V1MODEL_JSON = Path("p4/v1model/build/netagg.json")
V1MODEL_P4INFO = Path("p4/v1model/build/netagg.p4info.txtpb")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def p4info() -> p4i.P4Info:
    """The committed P4Info of the v1model program."""
    return text_format.Parse((REPO / V1MODEL_P4INFO).read_text(), p4i.P4Info())


@pytest.fixture(scope="session")
def bmv2_json() -> dict[str, Any]:
    """The committed BMv2 JSON of the v1model program."""
    return json.loads((REPO / V1MODEL_JSON).read_text())
