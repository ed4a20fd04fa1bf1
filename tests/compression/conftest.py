"""One software switch and controller for the compression tests of a module that needs netagg."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netagg.local import LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")).start() as running:
        yield running
