"""The P4Runtime entities the controller installs, by P4Info name (docs/protocol.md, "P4Info names").

Pure functions from the topology and the jobs to finsy entities: no connection, no state. Addresses stay in
their text form ("10.0.0.1", "02:00:00:00:00:01"): finsy encodes them for 32- and 48-bit fields, and error
messages that quote an entry stay readable. Each call returns new objects, because finsy marks an entity with
its update type (+ insert, - delete, ~ modify) in place.
"""

from __future__ import annotations

from finsy import P4MulticastGroupEntry, P4TableAction, P4TableEntry, P4TableMatch

from netagg.constants import FLOOD_MCAST_GROUP, JOB_MCAST_GROUP_BASE

from .jobs import Job
from .topology import Topology, loss_threshold

Entity = P4TableEntry | P4MulticastGroupEntry


def agg_addr_default(topo: Topology) -> P4TableEntry:
    """The keyless egress table's default action: the source of every RESULT (a MODIFY, never an INSERT)."""
    return P4TableEntry(
        "agg_addr",
        is_default_action=True,
        action=P4TableAction("set_agg_addr", mac=topo.mac, addr=topo.addr),
    )


def static_entries(topo: Topology) -> list[Entity]:
    """Entries to INSERT for the topology: ARP responder, L2 forwarding, flood group, drop simulator."""
    entries: list[Entity] = [
        P4TableEntry(
            "arp_reply",
            match=P4TableMatch(target_addr=topo.addr),
            action=P4TableAction("reply_arp", mac=topo.mac),
        )
    ]
    if not topo.udp_mode:  # UDP-mode hosts have no MAC; nothing is forwarded at layer 2
        entries += [
            P4TableEntry(
                "l2_forward",
                match=P4TableMatch(dst_addr=host.mac),
                action=P4TableAction("forward", port=host.port),
            )
            for host in topo.hosts
        ]
    entries.append(P4MulticastGroupEntry(FLOOD_MCAST_GROUP, replicas=[(port, 0) for port in topo.ports]))
    for loss in topo.loss:
        for table, probability in (("ingress_loss", loss.ingress), ("egress_loss", loss.egress)):
            entries.append(
                P4TableEntry(
                    table,
                    match=P4TableMatch(port=loss.port),
                    action=P4TableAction("set_loss", threshold=loss_threshold(probability)),
                )
            )
    return entries


def job_entries(job: Job) -> list[Entity]:
    """Entries to INSERT for a job: one ``workers`` and one ``results`` entry per worker, and its result group."""
    entries: list[Entity] = []
    for w in job.workers:
        entries.append(
            P4TableEntry(
                "workers",
                match=P4TableMatch(job=job.job_id, src_addr=w.addr, src_port=w.udp_port),
                action=P4TableAction(
                    "set_worker",
                    worker_id=w.rank,
                    num_workers=job.world_size,
                    pool_base=job.pool.base,
                    pool_size=job.pool.slots,
                    size=job.size_code,
                    epoch=job.epoch,
                    port=w.switch_port,
                ),
            )
        )
    for w in job.workers:
        entries.append(
            P4TableEntry(
                "results",
                match=P4TableMatch(job=job.job_id, worker_id=w.rank),
                action=P4TableAction("set_result_dst", mac=w.mac, addr=w.addr, port=w.udp_port),
            )
        )
    entries.append(
        P4MulticastGroupEntry(
            JOB_MCAST_GROUP_BASE + job.job_id, replicas=[(w.switch_port, w.rank) for w in job.workers]
        )
    )
    return entries


def job_keys(job: Job) -> list[Entity]:
    """The same entities as ``job_entries`` reduced to what a DELETE needs (keys, group ids)."""
    keys: list[Entity] = [
        P4TableEntry("workers", match=P4TableMatch(job=job.job_id, src_addr=w.addr, src_port=w.udp_port))
        for w in job.workers
    ]
    keys += [P4TableEntry("results", match=P4TableMatch(job=job.job_id, worker_id=w.rank)) for w in job.workers]
    keys.append(P4MulticastGroupEntry(JOB_MCAST_GROUP_BASE + job.job_id))
    return keys
