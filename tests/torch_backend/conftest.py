"""The software switch and controller every torch test runs against (one pair per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netagg.local import LocalStack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path / "stack").start() as running:
        yield running
