"""Recompiling the v1model program reproduces the committed artifacts (skipped without p4c-bm2-ss)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

pytestmark = pytest.mark.p4c

#: What the compiler needs at most; it takes well under a minute on two cores.
COMPILE_TIMEOUT_S = 300


def _compile(repo: Path, out: Path) -> tuple[Path, Path]:
    """Compile as p4/Makefile does (from the repository root, on relative paths) into ``out``."""
    bmv2_json, p4info = out / "netagg.json", out / "netagg.p4info.txtpb"
    command = [
        "p4c-bm2-ss",
        "--arch",
        "v1model",
        "--std",
        "p4-16",
        "-o",
        str(bmv2_json),
        "--p4runtime-files",
        str(p4info),
        "p4/v1model/main.p4",
    ]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    assert done.returncode == 0, f"p4c-bm2-ss failed:\n{done.stderr}"
    return bmv2_json, p4info


@pytest.fixture(scope="module")
def recompiled(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _compile(repo, tmp_path_factory.mktemp("p4c"))


def test_p4info_is_current(recompiled: tuple[Path, Path], p4info: p4i.P4Info) -> None:
    fresh = text_format.Parse(recompiled[1].read_text(), p4i.P4Info())
    assert fresh == p4info, "p4/v1model/build/netagg.p4info.txtpb is stale: run `make p4`"


def test_bmv2_json_is_current(recompiled: tuple[Path, Path], bmv2_json: dict[str, Any]) -> None:
    fresh = json.loads(recompiled[0].read_text())
    assert fresh == bmv2_json, "p4/v1model/build/netagg.json is stale: run `make p4`"
