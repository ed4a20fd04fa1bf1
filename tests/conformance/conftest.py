"""Fixtures: one running target per session and target kind, a freshly pushed pipeline per test.

Every test in this directory takes the ``sut`` fixture and therefore runs once per target selected by
``NETAGG_TARGET`` (softswitch | bmv2 | all | a comma list; default all, a target that is not installed is
skipped with the reason).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns_util import Topology, missing_requirements
from p4info_contract import BMV2_JSON_PATH, P4INFO_PATH

from . import program
from .harness import NUM_PORTS, PORTS, SwitchUnderTest
from .p4rt import P4RuntimeSession
from .ports import PortSet
from .targets import DEVICE_ID, Target, TargetError, TargetProcess, selected_targets


def _target_params() -> list[object]:
    return [
        pytest.param(t, id=t.name, marks=[pytest.mark.bmv2] if t.name == "bmv2" else [])
        for t in selected_targets(os.environ.get("NETAGG_TARGET"))
    ]


@dataclass
class RunningTarget:
    topology: Topology
    process: TargetProcess
    ports: PortSet


@pytest.fixture(scope="session", params=_target_params())
def running_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTarget]:
    """The target process in its own namespace, with a test-side socket on every port."""
    target: Target = request.param
    reason = missing_requirements() or target.unavailable_reason()
    if reason:
        pytest.skip(f"{target.name}: {reason}")
    workdir: Path = tmp_path_factory.mktemp(target.name)
    topology = Topology(tag={"softswitch": "cs", "bmv2": "cb"}[target.name], ports=NUM_PORTS)
    topology.create()
    process = None
    ports = None
    try:
        process = TargetProcess(target, topology.namespace, dict(zip(PORTS, topology.switch_ifaces)), workdir)
        process.start()
        ports = PortSet(dict(zip(PORTS, topology.test_ifaces)))
        yield RunningTarget(topology, process, ports)
    finally:
        if ports is not None:
            ports.close()
        if process is not None:
            process.stop()
        topology.close()


@pytest.fixture
def sut(running_target: RunningTarget) -> Iterator[SwitchUnderTest]:
    """The target with a freshly pushed pipeline (all state cleared), ``agg_addr`` and the flood group set."""
    process = running_target.process
    if not process.running():  # an earlier test killed it: start it again for the rest of the session
        process.stop()
        process.start()
    session = P4RuntimeSession(process.grpc_addr, P4INFO_PATH, BMV2_JSON_PATH, DEVICE_ID)
    session.open()
    try:
        session.modify([program.agg_addr_entry()])
        session.insert([program.flood_group(PORTS)])
        running_target.ports.drain()
        yield SwitchUnderTest(process.target.name, session, running_target.ports)
    finally:
        _end_test(session, process)


def _end_test(session: P4RuntimeSession, process: TargetProcess) -> None:
    """Delete the test's multicast groups (see ``delete_multicast_groups``), close, fail if the target died."""
    try:
        if process.running():
            session.delete_multicast_groups()
    finally:
        session.close()
    try:
        process.check_alive()
    except TargetError:
        process.stop()  # forget it; the next test restarts it
        raise
