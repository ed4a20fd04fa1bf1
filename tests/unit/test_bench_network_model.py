"""The network benchmark's bounds: wire efficiency from the wire format's header sizes, and the time bounds."""

from __future__ import annotations

import pytest

from bench.network import model
from netagg.wire import message_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("lanes", [32, 64, 128, 256])
def test_frame_is_ethernet_ipv4_udp_and_the_aggregation_message(lanes: int) -> None:
    # 14 + 20 + 8 bytes in front of the message the wire module encodes.
    assert model.netagg_frame_bytes(lanes) == 42 + message_bytes(lanes)
    assert model.netagg_wire_efficiency(lanes) == pytest.approx(lanes * 4 / (42 + message_bytes(lanes)))


def test_bounds_at_the_issue_figures() -> None:
    # 256 lanes: 1024 payload bytes in 1084-byte frames.
    assert model.netagg_wire_efficiency(256) == pytest.approx(1024 / 1084)
    assert model.speedup_bound(4, 256) == pytest.approx(1.5 * 1024 / 1084)
    assert model.speedup_bound(8, 256) == pytest.approx(1.75 * 1024 / 1084)
    # 16 MiB at 20 Mbit/s: 6.71 s of payload, 7.10 s of frames.
    assert model.netagg_bound_seconds(16 << 20, 20, 256) == pytest.approx(16 * 2**20 * 8 / 20e6 * 1084 / 1024)
    # gloo sends 2(n-1)/n of the tensor in 1448-byte TCP payloads of 1514-byte frames.
    assert model.gloo_bound_seconds(16 << 20, 20, 4) == pytest.approx(1.5 * 16 * 2**20 * 8 / 20e6 * 1514 / 1448)
    ratio = model.gloo_bound_seconds(16 << 20, 20, 4) / model.netagg_bound_seconds(16 << 20, 20, 256)
    assert model.time_bound_ratio(4, 256) == pytest.approx(ratio)
