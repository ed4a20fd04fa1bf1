"""One queued all-reduce: its staged blocks, where results land, and the future the caller holds."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from netagg.host_agent import quantize as q
from netagg.host_agent.collective import Collective
from netagg.host_agent.staging import Staged, Target, finished_values


class Operation:
    """State of one all-reduce between submission and completion.

    The transport thread quantizes each row of ``staged`` straight into a packet buffer (``used_exps`` keeps the
    shared exponent it used) and, when the row's RESULT arrives, :meth:`land` writes the sum into the same row:
    dequantized straight from the receive buffer (float), or as summed lane pairs (int32). ``finish`` runs once
    every row has arrived, on the completion thread, and only hands the values over.

    An *abort* operation stands in for an all-reduce this rank gave up on (a local error): one all-zero chunk at
    the all-reduce's place in the stream, flagged ABORT, so the other ranks fail that all-reduce within a round
    trip instead of waiting for chunks that never come. Its future is internal; nobody gets its value.
    """

    def __init__(
        self,
        index: int,
        staged: Staged,
        target: Target | None,
        num_workers: int,
        descriptor: Collective,
        *,
        abort_error: BaseException | None = None,
    ) -> None:
        self.index = index  # position in the job's sequence of all-reduces on this client
        self.staged = staged
        self.target = target
        self.num_workers = num_workers
        self.descriptor = descriptor
        self.op_id = descriptor.op_id  # the ``op`` field of every UPDATE of this operation
        self.abort_error = abort_error  # set for an abort operation: the local error it stands for
        m = staged.num_blocks
        self.first_chunk = -1  # global data-chunk index of row 0, assigned by the transport thread
        self.used_exps = np.zeros(m, dtype=np.int8)  # shared exponent each row was quantized with
        # Prescaled rows land as summed lanes; each row's RESULT NONFINITE flag is kept for their dequantization.
        self.result_nonfinite = np.zeros(m if staged.prescaled else 0, dtype=bool)
        self.remaining = m
        self.future: Future[Any] = Future()
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None  # first UPDATE sent for it
        self.progress_at = 0.0  # its first UPDATE or its latest RESULT: the deadline counts from here
        self.rows_sent = 0
        self.blocks = m  # num_blocks as a plain attribute, for per-packet use
        # Plain-int copies read once per packet by the transport thread (indexing numpy per packet costs more).
        self.block_exps: list[int] = staged.exps.tolist()

    @property
    def num_blocks(self) -> int:
        return self.staged.num_blocks

    def land(self, r0: int, sums: np.ndarray, nonfinite: np.ndarray) -> None:
        """Write the summed lanes of rows ``r0 .. r0 + len(sums) - 1`` (wire byte order, any row stride) into
        the staged rows; ``nonfinite`` flags the rows whose RESULT said NONFINITE (they become NaN)."""
        staged = self.staged
        for a, b, rows in staged.parts(r0, r0 + len(sums)):
            src = sums[a - r0 : b - r0]
            if staged.exact or staged.prescaled:
                rows[...] = src  # byte order converted by the copy
                if staged.prescaled:
                    self.result_nonfinite[a:b] = nonfinite[a - r0 : b - r0]
            else:
                q.dequantize(src, self.used_exps[a:b], self.num_workers, nonfinite[a - r0 : b - r0], out=rows)

    def finish(self) -> Any:
        """Hand the sums to the caller's target; returns the all-reduce's value."""
        if self.target is None:  # an abort operation: every rank gave up on it, there is no value
            return None
        if self.staged.prescaled:
            return self.target.deliver_lanes(self.staged.head, self.used_exps, self.result_nonfinite)
        return finished_values(self.staged, self.target)

    @property
    def abort(self) -> bool:
        return self.abort_error is not None
