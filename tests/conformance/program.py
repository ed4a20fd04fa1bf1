"""Jobs, workers and the P4Runtime entities that configure them, by P4Info name (docs/protocol.md).

The conformance suite programs the switch directly with finsy entities; it does not use the project's
controller, so a controller bug cannot hide a switch bug (or the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import finsy as fy

from netagg.constants import FLOOD_MCAST_GROUP, JOB_MCAST_GROUP_BASE

from .frames import Endpoint, ip_int, mac_int

#: The switch's aggregation address (``agg_addr``) in every test.
AGG = Endpoint(mac="02:00:00:00:ff:01", ip="10.255.0.1", udp_port=0)


@dataclass(frozen=True)
class Worker:
    id: int
    port: int  # the switch port the worker is behind
    endpoint: Endpoint
    key: int  # its data-plane key: in its `workers` entry (checked in UPDATEs) and `results` entry (in RESULTs)


@dataclass(frozen=True)
class Job:
    job: int
    workers: tuple[Worker, ...]
    pool_base: int
    pool_size: int
    size: int  # admitted size code
    epoch: int

    @property
    def n(self) -> int:
        return len(self.workers)

    def with_epoch(self, epoch: int) -> Job:
        return replace(self, epoch=epoch)


def make_workers(job: int, count: int, ports: list[int]) -> tuple[Worker, ...]:
    """``count`` workers spread round-robin over ``ports``, each with its own MAC, IPv4 address, UDP port and
    key (a full 32-bit value, the top bit set, different for every worker)."""
    if not 1 <= job <= 250 or count > 250:
        raise ValueError("addresses below are built for job 1..250 and at most 250 workers")
    return tuple(
        Worker(
            id=i,
            port=ports[i % len(ports)],
            endpoint=Endpoint(mac=f"02:00:00:{job:02x}:00:{i + 1:02x}", ip=f"10.{job}.0.{i + 1}",
                              udp_port=40000 + 100 * job + i),
            key=(0x9E37_79B9 * (job << 8 | i + 1)) & 0xFFFF_FFFF | 0x8000_0000,
        )
        for i in range(count)
    )


def agg_addr_entry(agg: Endpoint = AGG) -> fy.P4TableEntry:
    """The keyless ``agg_addr`` table's default action (write with MODIFY)."""
    return fy.P4TableEntry(
        "agg_addr",
        action=fy.P4TableAction("set_agg_addr", mac=mac_int(agg.mac), addr=ip_int(agg.ip)),
        is_default_action=True,
    )


def worker_entries(job: Job) -> list[fy.P4TableEntry]:
    """``workers`` entries: (job, IPv4 source, UDP source port) -> set_worker(...)."""
    return [
        fy.P4TableEntry(
            "workers",
            match=fy.P4TableMatch(job=job.job, src_addr=ip_int(w.endpoint.ip), src_port=w.endpoint.udp_port),
            action=fy.P4TableAction(
                "set_worker",
                worker_id=w.id,
                num_workers=job.n,
                pool_base=job.pool_base,
                pool_size=job.pool_size,
                size=job.size,
                epoch=job.epoch,
                port=w.port,
                key=w.key,
            ),
        )
        for w in job.workers
    ]


def result_entries(job: Job) -> list[fy.P4TableEntry]:
    """``results`` entries: (job, worker id) -> set_result_dst(mac, addr, port, key)."""
    return [
        fy.P4TableEntry(
            "results",
            match=fy.P4TableMatch(job=job.job, worker_id=w.id),
            action=fy.P4TableAction(
                "set_result_dst",
                mac=mac_int(w.endpoint.mac),
                addr=ip_int(w.endpoint.ip),
                port=w.endpoint.udp_port,
                key=w.key,
            ),
        )
        for w in job.workers
    ]


def job_group(job: Job) -> fy.P4MulticastGroupEntry:
    """The job's RESULT group: one replica per worker, (worker's port, rid = worker id)."""
    return fy.P4MulticastGroupEntry(
        JOB_MCAST_GROUP_BASE + job.job, replicas=[(w.port, w.id) for w in job.workers]
    )


def flood_group(ports: list[int]) -> fy.P4MulticastGroupEntry:
    return fy.P4MulticastGroupEntry(FLOOD_MCAST_GROUP, replicas=[(p, 0) for p in ports])


def l2_entry(mac: str, port: int) -> fy.P4TableEntry:
    return fy.P4TableEntry(
        "l2_forward", match=fy.P4TableMatch(dst_addr=mac_int(mac)), action=fy.P4TableAction("forward", port=port)
    )


def arp_entry(ip: str, mac: str) -> fy.P4TableEntry:
    return fy.P4TableEntry(
        "arp_reply",
        match=fy.P4TableMatch(target_addr=ip_int(ip)),
        action=fy.P4TableAction("reply_arp", mac=mac_int(mac)),
    )


def loss_threshold(probability: float) -> int:
    """``set_loss`` threshold for a drop probability: drop when a uniform uint32 is below it."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"loss probability {probability} not in [0, 1)")
    return round(probability * (1 << 32))


def loss_entry(table: str, port: int, probability: float) -> fy.P4TableEntry:
    """An ``ingress_loss`` or ``egress_loss`` entry for ``port``."""
    return fy.P4TableEntry(
        table,
        match=fy.P4TableMatch(port=port),
        action=fy.P4TableAction("set_loss", threshold=loss_threshold(probability)),
    )
