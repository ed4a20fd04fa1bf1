"""BCube in namespaces, the parts that need no root: sizes that are not a BCube, the address plan, missing cards."""

from __future__ import annotations

import ipaddress

import pytest

from bench.bml.__main__ import main
from bench.bml.topology import AddressPlan, bcube_for
from bench.network.topology import BenchNetworkError
from netagg.host_agent.bml import BCube

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("hosts", "cards"), [(8, 2), (10, 2), (9, 3), (1, 1), (9, 0)])
def test_host_counts_that_are_not_a_bcube_are_refused_with_the_sizes_that_are(hosts: int, cards: int) -> None:
    with pytest.raises(BenchNetworkError, match="BCube") as info:
        bcube_for(hosts, cards)
    assert "\n" not in str(info.value)


def test_bcube_sizes_are_found() -> None:
    assert bcube_for(9, 2) == BCube(3, 2)
    assert bcube_for(8, 3) == BCube(2, 3)
    assert bcube_for(9, 1) == BCube(9, 1)


def test_the_command_line_says_why_a_host_count_is_not_a_bcube(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--hosts", "8", "--cards", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--hosts 8 --cards 2: 8 hosts with 2 cards each is not a BCube" in err, err


@pytest.mark.parametrize("cube", [BCube(2, 2), BCube(3, 2), BCube(2, 3), BCube(9, 1)], ids=str)
def test_every_group_is_one_subnet_and_groups_do_not_share_one(cube: BCube) -> None:
    plan = AddressPlan(cube)
    subnets: dict[tuple[int, int], set[ipaddress.IPv4Network]] = {}
    addresses = [a for cards in plan.addresses() for a in cards]
    assert len(set(addresses)) == cube.hosts * cube.k
    for host in range(cube.hosts):
        for level in range(cube.k):
            card = plan.card(host, level)
            net = ipaddress.IPv4Network(f"{card.address}/24", strict=False)
            subnets.setdefault((level, plan.group(host, level)), set()).add(net)
            # Hosts of one group are exactly the hosts on one level-l switch.
            members = {plan.group(peer, level) for peer in cube.group(host, level)}
            assert members == {plan.group(host, level)}
    assert all(len(nets) == 1 for nets in subnets.values())
    every = [next(iter(nets)) for nets in subnets.values()]
    assert len(set(every)) == len(every) == cube.k * cube.n ** (cube.k - 1)


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: h1-eth0    inet 10.100.0.1/24 brd 10.100.0.255 scope global h1-eth0\\       valid_lft forever
3: h1-eth1    inet 10.101.0.1/24 brd 10.101.0.255 scope global h1-eth1\\       valid_lft forever
"""


def test_a_host_with_all_its_cards_passes_the_check() -> None:
    assert AddressPlan(BCube(2, 2)).missing_cards(0, IP_ADDR) == []


def test_a_missing_card_is_named_with_its_level() -> None:
    without = "\n".join(line for line in IP_ADDR.splitlines() if "h1-eth1" not in line)
    assert AddressPlan(BCube(2, 2)).missing_cards(0, without) == ["h1: no interface h1-eth1 (its level-1 card)"]


def test_a_card_with_the_wrong_address_is_named() -> None:
    wrong = IP_ADDR.replace("10.100.0.1/24", "10.100.0.7/24")
    assert AddressPlan(BCube(2, 2)).missing_cards(0, wrong) == [
        "h1: h1-eth0 has 10.100.0.7, not 10.100.0.1 (its level-0 card)"
    ]
