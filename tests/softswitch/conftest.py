"""Fixtures of the softswitch's P4Runtime tests: a server on loopback and a client of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from p4runtime_testlib import Client, Running, running_server


@pytest.fixture
def sw() -> Iterator[Running]:
    """A P4Runtime server (with its state and a stub pipeline) on 127.0.0.1."""
    with running_server() as running:
        yield running


@pytest.fixture
def client(sw: Running) -> Iterator[Client]:
    """A primary client that has pushed netagg's pipeline (modules that need less override this fixture)."""
    c = sw.client()
    c.become_primary(1)
    c.push(c.program.config())
    yield c
    c.close()
