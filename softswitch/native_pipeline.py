"""The compiled data path: ``Pipeline`` with the aggregation step of every burst run by ``_native.Kernel``.

``softswitch/pipeline.py`` stays the executable reference; this subclass shares its registers, counters, drop
simulator stream and table caches, and decodes the tables once per control-plane change into the flat arrays the
kernel reads (sorted keys it binary-searches, per-port loss thresholds, per-job multicast members). Frames the
kernel does not take (ARP, L2 traffic, anything that is not UDP to the aggregation port) go through the reference,
in order, so one burst may mix both. ``NETAGG_DATAPATH=python|native`` chooses between the two (``make_pipeline``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np

from netagg.constants import (
    AGG_UDP_PORT,
    FLAGS_DEFINED,
    JOB_MCAST_GROUP_BASE,
    LANES_PER_BLOCK,
    MAX_JOBS,
    NUM_DROP_REASONS,
    NUM_JOB_STATS,
    POOL_SLOTS,
    SIZE_CODES,
    WIRE_VERSION,
    DropReason,
    Flag,
    JobStat,
    MsgType,
    chosen_datapath,
)
from netagg.wire import U32_MAX

from . import _native
from .pipeline import _RANDOM_BATCH, Burst, OutBurst, Output, Pipeline
from .state import SwitchState, Table

_LOSS_PORTS: Final = _native.LOSS_PORTS


def kernel_consts() -> tuple[int, ...]:
    """Every constant the kernel needs, in ``struct agg_consts`` order (softswitch/native/kernel.h)."""
    d = DropReason
    return (
        AGG_UDP_PORT, WIRE_VERSION, POOL_SLOTS, LANES_PER_BLOCK, max(SIZE_CODES),
        FLAGS_DEFINED, int(Flag.MISMATCH), int(MsgType.UPDATE), int(MsgType.RESULT),
        NUM_DROP_REASONS, NUM_JOB_STATS, MAX_JOBS,
        d.PARSER_ERROR, d.UNKNOWN_WORKER, d.BAD_MSG_TYPE, d.RESERVED_BIT, d.BAD_SIZE, d.BAD_LENGTH,
        d.SLOT_OUT_OF_RANGE, d.DUPLICATE_PENDING, d.STALE, d.SIMULATED_LOSS, d.BAD_VERSION, d.BAD_KEY,
        JobStat.AGGREGATED, JobStat.COMPLETED, JobStat.RETRANSMIT_ANSWERED,
    )  # fmt: skip


class NativePipeline(Pipeline):
    """The pipeline with its aggregation step compiled; same state, same results as ``Pipeline``."""

    def __init__(self, state: SwitchState, seed: int | None = None) -> None:
        self._kernel = _native.Kernel(kernel_consts())
        # The drop simulator's stream, shared by the kernel and the reference path: draws not yet used stay at
        # the front when more are drawn, so the sequence is the one the reference pipeline draws.
        self._draws = np.zeros(0, dtype=np.uint64)
        self._draws_next = 0
        self._single = Burst(1, 0)
        self._single_out = OutBurst()
        super().__init__(state, seed)

    # ------------------------------------------------------------------------------------------- tables

    def _refresh(self) -> None:
        super()._refresh()
        regs = self.registers
        registers = (regs.epoch, regs.bitmap, regs.count, regs.tsi, regs.exp, regs.flags, regs.op, regs.lanes)
        empty = np.zeros(0, dtype=np.uint64)
        counters: list[np.ndarray] = []
        for name in ("drops", "job_drops", "job_stats"):
            counter = self.state.counters.get(name)
            counters += [counter.packets, counter.bytes] if counter is not None else [empty, empty]
        # Kept on self: the kernel reads these arrays until the next bind.
        self._tables = self._decode_tables()
        self._kernel.bind(registers, tuple(counters), self._tables)

    def _decode_tables(self) -> tuple[np.ndarray, ...]:
        workers: dict[int, tuple[int, ...]] = {}
        for (job, src, sport), action in self._t_workers.entries.items():
            if action.name != "set_worker" or not (0 <= job <= 0xFF and 0 <= src <= U32_MAX and 0 <= sport <= 0xFFFF):
                continue  # a key no parsed packet can carry
            hit = self._worker(job, src, sport)
            workers[job << 48 | src << 16 | sport] = hit  # type: ignore[assignment]
        results: dict[int, tuple[int, ...]] = {}
        for (job, worker_id), action in self._t_results.entries.items():
            if action.name != "set_result_dst" or not (0 <= job <= 0xFF and 0 <= worker_id <= 0xFF):
                continue
            dst = self._result_dst(job, worker_id)
            assert dst is not None
            mac = int.from_bytes(dst[0], "big")
            results[job << 8 | worker_id] = (mac >> 32, mac & U32_MAX, dst[1], dst[2], dst[4])
        worker_keys = np.array(sorted(workers), dtype=np.uint64)
        worker_rows = np.array([workers[k] for k in sorted(workers)], dtype=np.uint32).reshape(-1, 8)
        result_keys = np.array(sorted(results), dtype=np.uint32)
        result_rows = np.array([results[k] for k in sorted(results)], dtype=np.uint32).reshape(-1, 5)
        group_start = np.zeros(MAX_JOBS + 1, dtype=np.int32)
        members: list[tuple[int, int]] = []
        for job in range(MAX_JOBS):
            for port, rid in self._groups.get(JOB_MCAST_GROUP_BASE + job, ()):
                members.append((min(port, 0x7FFF_FFFF), min(rid, 0x7FFF_FFFF)))
            group_start[job + 1] = len(members)
        group_members = np.array(members, dtype=np.int32).reshape(-1, 2)
        agg = self._agg_src
        config = np.zeros(_native.CONFIG_WORDS, dtype=np.uint32)
        if agg is not None:
            mac = int.from_bytes(agg[0], "big")
            config[_native.C_AGG_SET] = 1
            config[_native.C_AGG_MAC_HI] = mac >> 32
            config[_native.C_AGG_MAC_LO] = mac & U32_MAX
            config[_native.C_AGG_ADDR] = agg[1]
        config[_native.C_INGRESS_LOSS_ON] = self._ingress_loss_on
        config[_native.C_EGRESS_LOSS_ON] = self._egress_loss_on
        ingress = self._loss_array(self._t_ingress_loss, self._ingress_loss_on)
        egress = self._loss_array(self._t_egress_loss, self._egress_loss_on)
        return worker_keys, worker_rows, result_keys, result_rows, group_start, group_members, ingress, egress, config

    def _loss_array(self, table: Table, on: bool) -> np.ndarray:
        """The threshold of every 9-bit port, then the default's (for any other port number)."""
        thresholds = np.zeros(_LOSS_PORTS + 1, dtype=np.uint32)
        if on:
            cache: dict[int, int] = {}
            for port in range(_LOSS_PORTS):
                thresholds[port] = self._loss_threshold(table, cache, port)
            default = table.default
            if default is not None and default.name == "set_loss":
                thresholds[_LOSS_PORTS] = default.params.get("threshold", 0) & U32_MAX
        return thresholds

    # ------------------------------------------------------------------------------------ drop simulator

    def _lost(self, threshold: int) -> bool:
        if self._draws_next >= len(self._draws):
            self._more_draws()
        i = self._draws_next
        self._draws_next = i + 1
        return int(self._draws[i]) < threshold

    def _more_draws(self) -> None:
        """Append one batch to the unused draws (the same batches, in the same order, as the reference)."""
        fresh = self._rng.integers(0, 1 << 32, size=_RANDOM_BATCH, dtype=np.uint64)
        self._draws = np.concatenate((self._draws[self._draws_next :], fresh))
        self._draws_next = 0

    # ---------------------------------------------------------------------------------------- data path

    def process(self, frame: bytes | bytearray | memoryview, ingress_port: int) -> list[Output]:
        """One frame through the kernel (a burst of one); see ``Pipeline.process``."""
        single = self._single
        single.buffer = bytes(frame)  # type: ignore[assignment]
        single.view = memoryview(single.buffer)
        single.meta[0] = (0, len(frame), ingress_port)
        single.count = 1
        out = self._single_out
        out.clear()
        sent: list[Output] = []

        def flush(full: OutBurst) -> None:
            sent.extend(full.frames())
            sent.extend(full.oversize)
            full.clear()

        self.process_burst(single, out, flush)
        flush(out)
        return sent

    def process_burst(self, burst: Burst, out: OutBurst, flush: Callable[[OutBurst], None]) -> None:
        with self._lock:
            if self.state.generation != self._generation:
                self._refresh()
            if not self._loaded:
                return  # no pipeline loaded: drop everything
            run = self._kernel.run
            frames = burst.meta[: burst.count]
            i = 0
            while i < burst.count:
                try:
                    stop, i, out.count, out.used, self._draws_next = run(
                        burst.buffer, frames, i, out.buffer, out.meta, out.count, out.used, self._draws,
                        self._draws_next,
                    )  # fmt: skip
                except Exception:  # a bug in the binding: drop the frame the kernel started at, keep serving
                    offset, length, port = frames[i].tolist()
                    self._internal_error(length, port)
                    i += 1
                    continue
                if stop == _native.DONE:
                    break
                if stop == _native.NEED_RANDOM:
                    self._more_draws()
                elif stop == _native.OUT_FULL and out.count:
                    flush(out)
                else:  # not an aggregation packet, or one whose copies exceed an empty output: the reference
                    offset, length, port = frames[i].tolist()
                    self._emit(self._process_frame(burst.view[offset : offset + length], port), out, flush)
                    i += 1


def make_pipeline(state: SwitchState, seed: int | None = None, datapath: str | None = None) -> Pipeline:
    """The pipeline ``datapath`` (default: ``$NETAGG_DATAPATH``, else native) names; ValueError for others."""
    if chosen_datapath(datapath) == "native":
        return NativePipeline(state, seed=seed)
    return Pipeline(state, seed=seed)
