"""The P4Info contract of docs/protocol.md ("P4Info names") for the tests, and the committed P4 pipeline.

This is the one place the tests state the contract: table keys, action parameters and counter sizes (derived from
``netagg.constants``), with the initial default action the P4 program gives each table. Tests that need a P4Info
load the committed one (``committed_p4info``); a test that needs a different program changes a copy of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from finsy.proto import p4i
from google.protobuf import text_format

from netagg import artifacts
from netagg import constants as c

#: The committed artifacts of the v1model program (`make -C p4` writes them).
P4INFO_PATH, BMV2_JSON_PATH = artifacts.P4INFO, artifacts.BMV2_JSON

Fields = tuple[tuple[str, int], ...]  # (name, bit width) in order

#: action -> parameters
ACTIONS: dict[str, Fields] = {
    "set_worker": (
        ("worker_id", 8),
        ("num_workers", 8),
        ("pool_base", 16),
        ("pool_size", 16),
        ("size", 8),
        ("epoch", c.EPOCH_BITS),
        ("port", c.PORT_BITS),
        ("key", c.KEY_BITS),
    ),
    "set_result_dst": (("mac", 48), ("addr", 32), ("port", 16), ("key", c.KEY_BITS)),
    "set_agg_addr": (("mac", 48), ("addr", 32)),
    "forward": (("port", c.PORT_BITS),),
    "flood": (),
    "reply_arp": (("mac", 48),),
    "set_loss": (("threshold", 32),),
}


@dataclass(frozen=True)
class TableContract:
    """One table: exact-match keys, the actions an entry may take, and its initial default action."""

    keys: Fields
    actions: frozenset[str]  # besides NoAction
    default: str = "NoAction"
    default_params: dict[str, int] = field(default_factory=dict)
    #: True where a miss is the contract's "no entry": the program fixes the default to NoAction.
    const_default: bool = True


TABLES: dict[str, TableContract] = {
    "workers": TableContract((("job", 8), ("src_addr", 32), ("src_port", 16)), frozenset({"set_worker"})),
    "results": TableContract((("job", 8), ("worker_id", 8)), frozenset({"set_result_dst"})),
    # The controller sets these two defaults at run time; the program's initial ones are below.
    "agg_addr": TableContract(
        (), frozenset({"set_agg_addr"}), "set_agg_addr", {"mac": 0, "addr": 0}, const_default=False
    ),
    "l2_forward": TableContract(
        (("dst_addr", 48),), frozenset({"forward", "flood"}), "flood", const_default=False
    ),
    "arp_reply": TableContract((("target_addr", 32),), frozenset({"reply_arp"})),
    "ingress_loss": TableContract((("port", c.PORT_BITS),), frozenset({"set_loss"})),
    "egress_loss": TableContract((("port", c.PORT_BITS),), frozenset({"set_loss"})),
}

#: counter -> size; every counter counts packets and bytes
COUNTERS: dict[str, int] = {
    "drops": c.NUM_DROP_REASONS,
    "job_drops": c.MAX_JOBS * c.NUM_DROP_REASONS,
    "job_stats": c.MAX_JOBS * c.NUM_JOB_STATS,
}


@functools.cache
def _parsed_p4info() -> p4i.P4Info:
    # Parsed once per session: the text format takes a noticeable time to parse.
    return text_format.Parse(P4INFO_PATH.read_text(), p4i.P4Info())


def committed_p4info() -> p4i.P4Info:
    """A copy of the committed P4Info that the caller may change."""
    info = p4i.P4Info()
    info.CopyFrom(_parsed_p4info())
    return info


@functools.cache
def committed_bmv2_json() -> bytes:
    """The committed BMv2 JSON (the P4Runtime device config of the program)."""
    return BMV2_JSON_PATH.read_bytes()
