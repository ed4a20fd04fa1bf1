"""Wire efficiency and the time bounds each point is compared with (header sizes from ``netagg.wire``)."""

from __future__ import annotations

from netagg.constants import LANE_BYTES
from netagg.wire import AGG_OFFSET, ETH_HEADER_BYTES, HEADER_BYTES, IPV4_HEADER_BYTES

#: gloo's TCP segments on a 1500-byte MTU: IPv4 20, TCP 20 + 12 bytes of timestamp option (the Linux default).
TCP_MTU = 1500
TCP_PAYLOAD = TCP_MTU - IPV4_HEADER_BYTES - 32


def netagg_frame_bytes(lanes: int) -> int:
    """Bytes of one aggregation frame as the shaper counts them (Ethernet header on, no FCS or preamble)."""
    return AGG_OFFSET + HEADER_BYTES + lanes * LANE_BYTES


def netagg_wire_efficiency(lanes: int) -> float:
    """Tensor bytes over frame bytes of one aggregation packet."""
    return lanes * LANE_BYTES / netagg_frame_bytes(lanes)


def tcp_wire_efficiency() -> float:
    """Payload bytes over frame bytes of a full-sized TCP segment (what gloo's ring sends)."""
    return TCP_PAYLOAD / (TCP_MTU + ETH_HEADER_BYTES)


def ring_factor(hosts: int) -> float:
    """Bytes a ring all-reduce sends per host, in tensor sizes: 2(n-1)/n."""
    return 2 * (hosts - 1) / hosts


def speedup_bound(hosts: int, lanes: int) -> float:
    """The most gloo/netagg can be on a link-bound network: 2(n-1)/n x netagg's wire efficiency."""
    return ring_factor(hosts) * netagg_wire_efficiency(lanes)


def time_bound_ratio(hosts: int, lanes: int) -> float:
    """gloo's bound over netagg's: ``speedup_bound`` corrected for the TCP headers gloo pays too."""
    return speedup_bound(hosts, lanes) / tcp_wire_efficiency()


def netagg_bound_seconds(size: int, rate_mbit: float, lanes: int) -> float:
    """Shortest netagg all-reduce: every host sends (and receives) its tensor once, in aggregation frames."""
    return size / netagg_wire_efficiency(lanes) * 8 / (rate_mbit * 1e6)


def gloo_bound_seconds(size: int, rate_mbit: float, hosts: int) -> float:
    """Shortest ring all-reduce: every host sends 2(n-1)/n of its tensor, in full TCP segments."""
    return ring_factor(hosts) * size / tcp_wire_efficiency() * 8 / (rate_mbit * 1e6)
