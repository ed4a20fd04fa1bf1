"""Every number the switch and the hosts must agree on that is not in the P4Info.

This module is the single source: the P4 program includes ``p4/include/constants.p4``, which
``python -m netagg.p4gen`` generates from it, and ``tests/unit/test_p4gen.py`` fails when the committed
file is stale. Nothing else in the repository may restate these values.
"""

from __future__ import annotations

import enum
import os
from typing import Final

#: UDP port of the switch's aggregation endpoint (workers send UPDATEs to it; RESULTs come from it).
AGG_UDP_PORT = 0xBEE0  # 48864

#: Aggregation header version this module describes (docs/protocol.md, "Wire format v2"); the top two bits of
#: header byte 0. A frame with another version (v1 frames have 0 there) is dropped as ``BAD_VERSION``.
WIRE_VERSION = 2

#: Largest number of workers in one job: the per-slot worker bitmap is 32 bits wide.
MAX_WORKERS = 32

#: Job ids are one byte on the wire.
MAX_JOBS = 256

#: int32 lanes in one payload block; a payload is 1, 2, 4 or 8 blocks (size code 0..3).
LANES_PER_BLOCK = 32

#: Valid ``size`` codes: a payload of ``LANES_PER_BLOCK << size`` lanes.
SIZE_CODES = (0, 1, 2, 3)

#: Lane counts the switch supports, indexed by size code.
LANE_COUNTS = tuple(LANES_PER_BLOCK << code for code in SIZE_CODES)

#: Largest payload, in lanes.
MAX_LANES = LANE_COUNTS[-1]

#: Bytes of one lane on the wire (int32, big-endian).
LANE_BYTES = 4

#: Aggregation slots in the switch pool, per copy (the pool holds two copies: set 0 and set 1).
POOL_SLOTS = 1024

#: Multicast group that floods ordinary (non-aggregation) broadcast and unknown-unicast frames.
FLOOD_MCAST_GROUP = 1

#: A job's RESULT multicast group is ``JOB_MCAST_GROUP_BASE + job``.
JOB_MCAST_GROUP_BASE = 0x100

#: Width of a switch port number on v1model targets (BMv2's ``egress_spec``).
PORT_BITS = 9

#: Job epochs are 32 bits; epoch 0 means "never used" (the state registers start at zero). The controller hands out
#: epochs that only grow over the lifetime of a pushed pipeline, so a slot copy left by any earlier job never
#: matches a later job's epoch (docs/protocol.md, "Why the epoch").
EPOCH_BITS = 32

#: Width of a worker's data-plane key (the secret the switch checks in every UPDATE; docs/security.md).
KEY_BITS = 32


class MsgType(enum.IntEnum):
    """The ``msg_type`` field of header byte 0 (bits 5-4; docs/protocol.md)."""

    UPDATE = 0  # worker -> switch: one chunk's lanes
    RESULT = 1  # switch -> worker: the finished sum of a chunk


class Flag(enum.IntFlag):
    """Bits of the header's ``flags`` byte. The switch ORs them over a round's contributions."""

    NONFINITE = 0x01  # the chunk held inf or NaN (UPDATE); some worker's did (RESULT)
    ABORT = 0x02  # the sender gave up on this collective (a local error): every worker fails it (RESULT)
    MISMATCH = 0x04  # set by the switch: contributions to the round carried different ``op`` values


#: Bits of ``flags`` that are defined; others must be zero.
FLAGS_DEFINED = int(Flag.NONFINITE | Flag.ABORT | Flag.MISMATCH)


class DropReason(enum.IntEnum):
    """Why the switch dropped an aggregation packet: the index into the ``drops`` counters."""

    PARSER_ERROR = 0  # truncated or otherwise unparsable frame
    UNKNOWN_WORKER = 1  # no ``workers`` entry for (job, source IPv4, source UDP port)
    BAD_MSG_TYPE = 2  # msg_type is not UPDATE
    RESERVED_BIT = 3  # reserved header bit set, or an undefined flag bit
    BAD_SIZE = 4  # size code not the one the job was admitted with (or > 3)
    BAD_LENGTH = 5  # UDP length does not match the size code
    SLOT_OUT_OF_RANGE = 6  # slot number >= the job's pool size
    DUPLICATE_PENDING = 7  # retransmission while the slot's round is still incomplete
    STALE = 8  # contribution for a round other than the slot's current one
    SIMULATED_LOSS = 9  # dropped by the drop simulator (ingress or egress)
    BAD_VERSION = 10  # the header's version is not WIRE_VERSION (for example a v1 frame)
    BAD_KEY = 11  # the UPDATE's key is not the one admitted for its (job, source address, source port)
    INTERNAL_ERROR = 12  # the software switch failed handling the frame (a bug, never the sender's fault)


#: Entries in each drop-reason counter group (room to grow without resizing counter arrays).
NUM_DROP_REASONS = 16


class JobStat(enum.IntEnum):
    """Per-job event counters: index ``job * NUM_JOB_STATS + stat`` of the ``job_stats`` counter."""

    AGGREGATED = 0  # an UPDATE was added into a slot
    COMPLETED = 1  # a slot's round completed and its RESULT was multicast
    RETRANSMIT_ANSWERED = 2  # a retransmitted UPDATE was answered with the stored RESULT


NUM_JOB_STATS = 4

assert len(DropReason) <= NUM_DROP_REASONS
assert len(JobStat) <= NUM_JOB_STATS
assert POOL_SLOTS < (1 << 15), "slot number is 15 bits on the wire"


#: Environment variable that chooses the data path of the software switch and the host agent alike: ``native``
#: (the compiled one, the default) or ``python`` (the executable reference it is tested against).
DATAPATH_ENV: Final = "NETAGG_DATAPATH"
DATAPATHS: Final = ("native", "python")


def chosen_datapath(explicit: str | None = None) -> str:
    """``explicit``, else ``$NETAGG_DATAPATH``, else ``native``; ValueError for any other name."""
    name = (explicit if explicit else os.environ.get(DATAPATH_ENV) or "native").strip().lower()
    if name not in DATAPATHS:
        raise ValueError(f"{DATAPATH_ENV}={name!r}: choose one of {', '.join(DATAPATHS)}")
    return name
