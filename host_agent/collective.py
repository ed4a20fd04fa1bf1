"""What identifies one collective across the ranks of a job: its descriptor and the 32-bit ``op`` id on the wire.

Every chunk a worker sends carries the op id of the collective it belongs to (docs/protocol.md, ``op``). Every
rank computes it the same way from what all of them share about the collective: its sequence number, element
count, dtype and how its elements travel. When the ranks' collectives at one point of the stream differ, the
switch flags the round MISMATCH and every rank learns of it from the RESULT, instead of adding unrelated chunks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

#: How the elements of a collective travel (part of its identity: ranks that encode differently cannot be added).
ENCODING_BFP = "bfp32"  # float types: float32 block floating point, one lane per element
ENCODING_INT32X2 = "int32x2"  # int32: two lanes per element (low 16 bits unsigned, high 16 bits signed)
ENCODING_ABORT = "abort"  # a collective this rank gave up on before sending any of its data

#: Name of a collective whose caller gave no descriptor (its seq is then the client's own count).
DEFAULT_NAME = "all-reduce"

#: Descriptors kept for naming the op id of a RESULT in error messages (when it is one of this rank's own).
RECENT_OPS = 1024


@dataclass(frozen=True, slots=True)
class Collective:
    """Descriptor of one collective: what every rank must agree on for their chunks to be added.

    ``seq`` is the collective's sequence number: the client's own count of all-reduces by default, or the
    caller's (the torch backend passes its group's count of every collective, those it serves through gloo too).
    ``count`` and ``dtype`` are None for a call that was given up before its tensor could be read.
    """

    name: str
    seq: int
    count: int | None
    dtype: str | None
    encoding: str = ""

    @property
    def op_id(self) -> int:
        """The 32-bit ``op`` of this collective's chunks: a hash every rank computes the same way.

        A collective given up on (``ENCODING_ABORT``) hashes its name and sequence number only, so ranks that all
        gave up on the same collective agree on its op even if they could not read their tensors.
        """
        if self.encoding == ENCODING_ABORT:
            text = f"{self.name}|{self.seq}|{ENCODING_ABORT}"
        else:
            text = f"{self.name}|{self.seq}|{self.count}|{self.dtype}|{self.encoding}"
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")

    def shape_text(self) -> str:
        """'100 float32 elements', or what is known of a call given up on."""
        if self.encoding == ENCODING_ABORT:
            return "given up locally" if self.count is None else f"{self.count} {self.dtype} elements (given up)"
        return f"{self.count} {self.dtype} elements"

    def __str__(self) -> str:
        return f"{self.name} #{self.seq} ({self.shape_text()})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seq": self.seq, "count": self.count, "dtype": self.dtype, "encoding": self.encoding}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Collective:
        return cls(str(data["name"]), int(data["seq"]), data.get("count"), data.get("dtype"), data.get("encoding", ""))


def label(index: int, descriptor: Collective) -> str:
    """How messages name the client's all-reduce ``index``: by its descriptor, and its index when they differ."""
    if descriptor.seq == index:
        return f"{descriptor.name} #{index}"
    return f"{descriptor.name} #{descriptor.seq} (the client's all-reduce #{index})"


def dtype_name(dtype: Any) -> str:
    """'float32' for numpy's and torch's float32 alike, so a numpy rank and a torch rank describe it the same."""
    return str(dtype).removeprefix("torch.")


class RecentOps:
    """The last ``RECENT_OPS`` collectives a client submitted, by op id (one thread writes and reads it)."""

    def __init__(self, limit: int = RECENT_OPS) -> None:
        self._limit = limit
        self._ops: OrderedDict[int, tuple[int, Collective]] = OrderedDict()

    def add(self, op_id: int, index: int, descriptor: Collective) -> None:
        self._ops[op_id] = (index, descriptor)
        self._ops.move_to_end(op_id)
        while len(self._ops) > self._limit:
            self._ops.popitem(last=False)

    def describe(self, op_id: int) -> str:
        """How an error names an op id: one of this rank's collectives, or the bare id."""
        known = self._ops.get(op_id)
        if known is None:
            return f"op {op_id:#010x} (not one of this rank's recent collectives)"
        return f"op {op_id:#010x} = this rank's {known[1]}"
