"""One queued all-reduce: its staged blocks, where results land, and the future the caller holds."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from netagg.host_agent import quantize as q
from netagg.host_agent.collective import Collective
from netagg.host_agent.staging import Staged, Target, join_int32
from netagg.wire import LANE_DTYPE


class Operation:
    """State of one all-reduce between submission and completion.

    The transport thread writes ``sums`` (through ``sum_bytes``), ``used_exps`` and ``result_nonfinite`` row by
    row (one row per RESULT); ``finish`` runs once every row has arrived, on the completion thread.

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
        m, lanes = staged.blocks.shape
        self.first_chunk = -1  # global data-chunk index of row 0, assigned by the transport thread
        # Summed lanes as they came on the wire (big-endian): the transport thread copies each RESULT's payload
        # bytes into ``sum_bytes`` and ``finish`` byte-swaps them all at once, off that thread.
        self.sum_bytes = bytearray(m * lanes * LANE_DTYPE.itemsize)
        self.sums = np.frombuffer(self.sum_bytes, dtype=LANE_DTYPE).reshape(m, lanes)
        self.used_exps = np.zeros(m, dtype=np.int8)  # shared exponent each row was quantized with
        self.result_nonfinite = np.zeros(m, dtype=bool)  # written only for flagged rows (each row arrives once)
        self.done = np.zeros(m, dtype=bool)
        self.remaining = m
        self.future: Future[Any] = Future()
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None  # first UPDATE sent for it
        self.progress_at = 0.0  # its first UPDATE or its latest RESULT: the deadline counts from here
        self.rows_sent = 0
        self.blocks = m  # num_blocks as a plain attribute, for per-packet use
        # Plain-int copies read once per packet by the transport thread (indexing numpy per packet costs more).
        self.block_exps: list[int] = staged.exps.tolist()
        self.block_nonfinite: list[bool] = staged.nonfinite.tolist()

    @property
    def num_blocks(self) -> int:
        return self.staged.num_blocks

    def finish(self) -> Any:
        """Dequantize the sums and hand them to the caller's target; returns the all-reduce's value."""
        staged = self.staged
        if self.target is None:  # an abort operation: every rank gave up on it, there is no value
            return None
        if staged.exact:
            flat = join_int32(self.sums.reshape(-1), staged.count)
        else:
            out = staged.blocks  # no longer needed: every row has been quantized and sent
            q.dequantize(self.sums, self.used_exps, self.num_workers, self.result_nonfinite, out=out)
            flat = out.reshape(-1)[: staged.count]
        return self.target.deliver(flat)

    @property
    def abort(self) -> bool:
        return self.abort_error is not None
