"""The torch backend's algorithm options: an unknown algorithm, BML without a plan, a plan of another size or a
file that is no plan are refused where the group is created, before it waits for any other rank, with one line
naming the setting and what is wrong. The plan file's format round-trips."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from netagg.host_agent.bml import BCube
from netagg.host_agent.bml_transport import BmlPlan

dist = pytest.importorskip("torch.distributed")

from netagg.host_agent.torch_backend import NetaggOptions, NetaggProcessGroup  # noqa: E402  (needs torch)

pytestmark = pytest.mark.unit


def loopback_plan(cube: BCube) -> BmlPlan:
    return BmlPlan(cube, tuple(tuple(f"127.{lvl + 10}.0.{h + 1}" for lvl in range(cube.k)) for h in range(cube.hosts)))


def _group(size: int, **options: object) -> NetaggProcessGroup:
    return NetaggProcessGroup(dist.HashStore(), 0, size, timedelta(seconds=5), NetaggOptions(**options))


def test_an_unknown_algorithm_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"algorithm 'ring' \(NETAGG_ALGORITHM\) is not one of .*: switch, bml$"):
        _group(2, algorithm="ring")
    monkeypatch.setenv("NETAGG_ALGORITHM", "BML")
    with pytest.raises(ValueError, match="algorithm 'BML'"):
        NetaggOptions().resolved()


def test_bml_without_a_plan_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETAGG_BML_PLAN", raising=False)
    with pytest.raises(ValueError, match="NETAGG_ALGORITHM=bml needs .*: set NETAGG_BML_PLAN"):
        _group(4, algorithm="bml")


def test_a_plan_whose_host_count_is_not_the_world_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(loopback_plan(BCube(2, 2)).to_json())
    with pytest.raises(ValueError, match=r"BCube\(n=2, k=2\) with 4 hosts; the group has 2 ranks"):
        _group(2, algorithm="bml", bml_plan=str(path))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "is not a BML plan: Expecting value"),
        ('{"n": 2, "k": 2}', "is not a BML plan: missing key 'cards'"),
        ('{"n": 3, "k": 1, "cards": [[{"address": "127.0.0.1"}]]}', "has 3 hosts; 'cards' lists 1"),
        ('{"n": 2, "k": 1, "cards": [[], [{"address": "127.0.0.1"}]]}', "host 0 needs 1 cards"),
        ('{"n": 1, "k": 1, "cards": []}', "a switch joins at least n=2 hosts"),
    ],
)
def test_a_file_that_is_no_plan_is_named_with_what_is_wrong(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^'{re.escape(str(path))}' .*{why}") as info:
        _group(4, algorithm="bml", bml_plan=str(path))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="cannot read the BML plan '.*absent.json'"):
        _group(4, algorithm="bml", bml_plan=str(tmp_path / "absent.json"))


def test_the_plan_file_round_trips_with_and_without_interface_names() -> None:
    plan = loopback_plan(BCube(3, 2))
    assert BmlPlan.from_json(plan.to_json()) == plan
    named = BmlPlan(plan.cube, plan.addresses, tuple(tuple(f"h{h}-eth{lvl}" for lvl in range(2)) for h in range(9)))
    assert BmlPlan.from_json(named.to_json()) == named
