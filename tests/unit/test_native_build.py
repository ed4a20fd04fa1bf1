"""The build of the compiled extensions names the Debian package to install when the toolchain is incomplete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _check_toolchain(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "--check-toolchain"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_toolchain_check_passes_here() -> None:
    run = _check_toolchain()
    assert run.returncode == 0, run.stderr


def test_missing_compiler_names_the_package(tmp_path: Path) -> None:
    run = _check_toolchain(CC=str(tmp_path / "no-such-cc"))
    assert run.returncode == 1
    assert "no C compiler" in run.stderr and "apt-get install gcc" in run.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to stand in for a compiler without libc headers")
def test_missing_c_library_headers_name_the_package(tmp_path: Path) -> None:
    cc = tmp_path / "cc-without-libc-headers"
    cc.write_text('#!/bin/sh\nexec gcc -nostdinc "$@"\n')
    cc.chmod(0o755)
    run = _check_toolchain(CC=str(cc))
    assert run.returncode == 1
    assert "apt-get install libc6-dev" in run.stderr
