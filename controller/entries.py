"""The P4Runtime entities the controller installs, by P4Info name (docs/protocol.md, "P4Info names").

Pure functions from the topology and the jobs to finsy entities: no connection, no state. Addresses stay in
their text form ("10.0.0.1", "02:00:00:00:00:01"): finsy encodes them for 32- and 48-bit fields, and error
messages that quote an entry stay readable. Each call returns new objects, because finsy marks an entity with
its update type (+ insert, - delete, ~ modify) in place.
"""

from __future__ import annotations

from finsy import P4MulticastGroupEntry, P4TableAction, P4TableEntry, P4TableMatch

from netagg.constants import EPOCH_BITS, FLOOD_MCAST_GROUP, JOB_MCAST_GROUP_BASE, KEY_BITS, PORT_BITS

from .jobs import Job
from .topology import Topology, loss_threshold

Entity = P4TableEntry | P4MulticastGroupEntry

#: Every action this module writes, by P4Info name: (table, action) -> {parameter: bit width} (docs/protocol.md,
#: "P4Info names"). ``switch.check_p4info`` compares it with the pipeline's P4Info before anything is written.
ACTION_PARAMS: dict[tuple[str, str], dict[str, int]] = {
    ("workers", "set_worker"): {
        "worker_id": 8, "num_workers": 8, "pool_base": 16, "pool_size": 16, "size": 8, "epoch": EPOCH_BITS,
        "port": PORT_BITS, "key": KEY_BITS,
    },
    ("results", "set_result_dst"): {"mac": 48, "addr": 32, "port": 16, "key": KEY_BITS},
    ("agg_addr", "set_agg_addr"): {"mac": 48, "addr": 32},
    ("l2_forward", "forward"): {"port": PORT_BITS},
    ("arp_reply", "reply_arp"): {"mac": 48},
    ("ingress_loss", "set_loss"): {"threshold": 32},
    ("egress_loss", "set_loss"): {"threshold": 32},
}


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
    """Entries to INSERT for a job: one ``workers`` and one ``results`` entry per worker, and its result group.

    Both entries of a worker carry its key; a re-install (switch restart) builds them from the same ``Job``, so
    the workers keep the keys they were given at admission.
    """
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
                    key=w.key,
                ),
            )
        )
    for w in job.workers:
        entries.append(
            P4TableEntry(
                "results",
                match=P4TableMatch(job=job.job_id, worker_id=w.rank),
                # The receiving worker's own key: it drops a RESULT without it (docs/protocol.md).
                action=P4TableAction("set_result_dst", mac=w.mac, addr=w.addr, port=w.udp_port, key=w.key),
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
