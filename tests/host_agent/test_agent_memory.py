"""Peak memory of an all-reduce: the tensor plus at most a quarter of it (measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.loopback

REPO = Path(__file__).resolve().parents[2]


def _measure(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.agent_memory", "--megabytes", "48", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_in_place_all_reduce_needs_no_copy_of_the_tensor() -> None:
    figures = _measure()
    assert figures["result_ok"], figures
    assert figures["overhead"] <= 0.25, figures  # was 2.0 and more: a staging copy and a sum buffer


def test_an_in_place_torch_cpu_tensor_is_not_copied_either() -> None:
    pytest.importorskip("torch")
    figures = _measure("--torch")
    assert figures["result_ok"] and figures["torch"], figures
    assert figures["overhead"] <= 0.25, figures  # was 1.0: a float32 staging copy of every torch tensor


def test_a_new_result_array_is_the_only_copy() -> None:
    figures = _measure("--copy")
    assert figures["result_ok"], figures
    assert figures["overhead"] <= 1.25, figures  # the returned array, nothing more
