"""Naming both sides of a failed collective: what each rank reports, and the sentence built from the reports.

When the ranks' streams part (CollectiveMismatchError, CollectiveAbortedError), each rank knows only its own side
and the other side's op id. A framework shim that has a way to exchange a few bytes (torch's rendezvous store)
publishes one record per rank and builds, from every record it could read, a message such as
``all_reduce #5 of group 'j': rank 0 has 100 float32 elements, rank 1 has 200 float32 elements``.

Records are plain JSON-able dicts. The stream position all ranks share is the client's all-reduce index (every rank
numbers its all-reduces the same way up to the point where they part), so records are compared index by index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from netagg.host_agent.collective import Collective
from netagg.host_agent.errors import StreamDivergedError


def local_record(rank: int, index: int, descriptor: Collective, error: str) -> dict[str, Any]:
    """What a rank that gave up on all-reduce ``index`` (a local error) publishes."""
    return {"rank": rank, "kind": "local", "error": error, "active": [[index, descriptor.to_dict()]]}


def diverged_record(rank: int, error: StreamDivergedError) -> dict[str, Any]:
    """What a rank whose all-reduce failed because the streams parted publishes: its unfinished all-reduces."""
    return {
        "rank": rank,
        "kind": "diverged",
        "error": str(error),
        "active": [[index, descriptor.to_dict()] for index, descriptor in error.active],
    }


def explain(
    group: str, records: Mapping[int, Mapping[str, Any]], missing: Sequence[int] = (), waited: float = 0.0
) -> str:
    """One sentence naming the failed collective and every reporting rank's side of it."""
    tables = {
        int(rank): {int(index): Collective.from_dict(d) for index, d in record.get("active", [])}
        for rank, record in records.items()
    }
    local = sorted((int(rank), record) for rank, record in records.items() if record.get("kind") == "local")
    note = (
        f" (rank(s) {', '.join(map(str, missing))} did not report within {waited:g} s)" if missing else ""
    )
    if local:
        rank, record = local[0]
        index, descriptor = next(iter(tables[rank].items()))
        parts = [f"rank {rank} gave up on it: {record.get('error')}"]
        for other in sorted(tables):
            if other != rank:
                theirs = tables[other].get(index)
                parts.append(f"rank {other} has {theirs.shape_text() if theirs else 'no collective there'}")
        return f"{descriptor.name} #{descriptor.seq} of group {group!r}: {', '.join(parts)}{note}"
    index = _first_difference(tables)
    if index is None:
        return f"the ranks' collectives of group {group!r} differ, but their reports do not show where{note}"
    sides = {rank: table.get(index) for rank, table in sorted(tables.items())}
    names = {(d.name, d.seq) for d in sides.values() if d is not None}
    if len(names) == 1:
        ((name, seq),) = names
        head = f"{name} #{seq} of group {group!r}: "
        parts = [f"rank {rank} has {d.shape_text() if d else 'no collective there'}" for rank, d in sides.items()]
    else:  # out of step: the ranks are at different collectives
        head = f"the ranks of group {group!r} are at different collectives: "
        parts = [f"rank {rank} has {d if d else 'no collective there'}" for rank, d in sides.items()]
    return head + ", ".join(parts) + note


def _first_difference(tables: Mapping[int, Mapping[int, Collective]]) -> int | None:
    """The lowest all-reduce index at which the descriptors of the ranks that list it differ.

    A rank that does not list an index may simply have finished that all-reduce (a matched one, before the
    streams parted), so only the ranks that list it are compared.
    """
    for index in sorted({i for table in tables.values() for i in table}):
        ids = {table[index].op_id for table in tables.values() if index in table}
        if len(ids) > 1:
            return index
    return None
