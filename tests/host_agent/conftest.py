"""Every host agent test runs on both data paths: the compiled engine and the Python reference.

A module that compares the two itself sets ``EACH_DATAPATH = False`` and picks them per client.
"""

from __future__ import annotations

import pytest

from netagg.constants import DATAPATH_ENV, DATAPATHS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "datapath" in metafunc.fixturenames and getattr(metafunc.module, "EACH_DATAPATH", True):
        metafunc.parametrize("datapath", DATAPATHS, indirect=True)


@pytest.fixture(autouse=True)
def datapath(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The data path this test runs on (also for agent processes it starts: they inherit the environment)."""
    name = getattr(request, "param", None)
    if name is not None:
        monkeypatch.setenv(DATAPATH_ENV, name)
    return name
