"""BML's schedule on BCube(n, k): exact sums on every host, and every card used once per stage."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.host_agent.bml import BCube, Phase, card_load, execute, level_of, schedule

pytestmark = pytest.mark.unit

TOPOLOGIES = [BCube(2, 1), BCube(3, 1), BCube(2, 2), BCube(3, 2), BCube(2, 3), BCube(4, 2), BCube(3, 3)]


@pytest.mark.parametrize("topo", TOPOLOGIES, ids=lambda t: f"BCube({t.n},{t.k})")
@pytest.mark.parametrize("count", [1, 7, 1000])
def test_every_host_gets_the_exact_sum(topo: BCube, count: int) -> None:
    rng = np.random.default_rng(count + topo.hosts)
    grads = rng.integers(-(2**31), 2**31, size=(topo.hosts, count), dtype=np.int64).astype(np.int32)
    out = execute(topo, grads)
    with np.errstate(over="ignore"):
        expected = grads.sum(axis=0, dtype=np.int32)  # wrapping int32 addition, as the exact path wraps
    for host in range(topo.hosts):
        np.testing.assert_array_equal(out[host], expected)


@pytest.mark.parametrize("topo", TOPOLOGIES, ids=lambda t: f"BCube({t.n},{t.k})")
def test_every_card_sends_and_receives_once_per_stage(topo: BCube) -> None:
    count = 6 * topo.hosts * topo.k  # divisible at every stage: equal pieces
    transfers = schedule(topo, count)
    load = card_load(topo, transfers)
    for stage in range(2 * topo.k):
        for host in range(topo.hosts):
            for level in range(topo.k):
                sent, received = load[(stage, host, level)]
                assert sent > 0 and received > 0, (stage, host, level)
        # One part per level and stage: the level's cards carry that part only.
        for level in range(topo.k):
            parts = {t.part for t in transfers if t.stage == stage and t.level == level}
            assert len(parts) == 1
    # Every card carries the same load in a stage, and a host sends 2 (N - 1)/N of its gradient in all.
    per_stage = {}
    for (stage, _, _), (sent, received) in load.items():
        per_stage.setdefault(stage, set()).add((sent, received))
    assert all(len(v) == 1 for v in per_stage.values()), per_stage
    total_sent = sum(t.size for t in transfers if t.src == 0)
    assert total_sent == 2 * (topo.hosts - 1) * count // topo.hosts


@pytest.mark.parametrize("topo", TOPOLOGIES, ids=lambda t: f"BCube({t.n},{t.k})")
def test_transfers_cross_one_switch_of_their_level(topo: BCube) -> None:
    for t in schedule(topo, 50):
        assert t.src != t.dst
        differing = [lvl for lvl in range(topo.k) if topo.digit(t.src, lvl) != topo.digit(t.dst, lvl)]
        assert differing == [t.level], t
        stage = t.stage if t.phase is Phase.AGGREGATE else 2 * topo.k - 1 - t.stage
        assert t.level == level_of(t.part, stage, topo.k)


def test_bcube_shapes_and_bad_ones() -> None:
    assert BCube.for_hosts(9, 2) == BCube(3, 2)
    assert BCube.for_hosts(8, 3) == BCube(2, 3)
    assert BCube.for_hosts(27, 3) == BCube(3, 3)
    with pytest.raises(ValueError, match="10 hosts with 2 cards each is not a BCube"):
        BCube.for_hosts(10, 2)
    with pytest.raises(ValueError, match="at least n=2"):
        BCube(1, 2)
    with pytest.raises(ValueError, match="at least one level"):
        BCube(3, 0)
    with pytest.raises(ValueError, match="has 9 hosts"):
        execute(BCube(3, 2), np.zeros((8, 4), np.int32))
    with pytest.raises(ValueError, match="integers"):
        execute(BCube(2, 1), np.zeros((2, 4), np.float32))
