"""What a conformance test gets: a freshly programmed target, its ports, and counter checks."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from netagg.constants import NUM_DROP_REASONS, NUM_JOB_STATS, DropReason, Flag, JobStat

from . import program
from .frames import OP, Endpoint, assert_result, dst_port_of, update_frame, wrap_int32
from .p4rt import P4RuntimeSession
from .ports import QUIET_S, PortSet

#: Switch ports 1..NUM_PORTS, each a veth pair. Four are enough to share 32 workers and to see flooding.
NUM_PORTS = 4
PORTS = list(range(1, NUM_PORTS + 1))

COUNTER_TIMEOUT_S = 10.0
_COUNTER_POLL_S = 0.02

#: (job or None, reason): a drop counted in ``drops[reason]`` and, unless job is None, ``job_drops``.
DropKey = tuple[int | None, DropReason]
#: (job, stat): one ``job_stats`` cell.
StatKey = tuple[int, JobStat]


class CounterWatch:
    """Counter deltas since construction for the global drop reasons and the given jobs' cells."""

    def __init__(self, session: P4RuntimeSession, jobs: Iterable[int]) -> None:
        self._session = session
        self.jobs = sorted(set(jobs))
        self.cells = [("drops", int(r)) for r in DropReason]
        self.cells += [("job_drops", j * NUM_DROP_REASONS + int(r)) for j in self.jobs for r in DropReason]
        self.cells += [("job_stats", j * NUM_JOB_STATS + int(s)) for j in self.jobs for s in JobStat]
        self._base = session.counters(self.cells)

    def delta(self) -> dict[tuple[str, int], int]:
        """Packets counted in every watched cell since the watch began."""
        now = self._session.counters(self.cells)
        return {cell: now[cell][0] - self._base[cell][0] for cell in self.cells}

    def byte_delta(self, name: str, index: int) -> int:
        """Bytes counted in one watched cell since the watch began."""
        return self._session.counters([(name, index)])[(name, index)][1] - self._base[(name, index)][1]

    def _expected(
        self, drops: Mapping[DropKey, int], stats: Mapping[StatKey, int]
    ) -> dict[tuple[str, int], int]:
        want: dict[tuple[str, int], int] = {}

        def add(cell: tuple[str, int], n: int) -> None:
            if cell not in self._base:
                raise ValueError(f"expectation names {_name(cell)}, which this watch does not read")
            want[cell] = want.get(cell, 0) + n

        for (job, reason), n in drops.items():
            add(("drops", int(reason)), n)
            if job is not None:
                add(("job_drops", job * NUM_DROP_REASONS + int(reason)), n)
        for (job, stat), n in stats.items():
            add(("job_stats", job * NUM_JOB_STATS + int(stat)), n)
        for cell in self.cells:
            want.setdefault(cell, 0)
        return want

    def wait(
        self,
        drops: Mapping[DropKey, int] | None = None,
        stats: Mapping[StatKey, int] | None = None,
        timeout: float = COUNTER_TIMEOUT_S,
    ) -> None:
        """Poll until the expected deltas are reached, then assert every watched cell is exactly as expected."""
        want = self._expected(drops or {}, stats or {})
        deadline = time.monotonic() + timeout
        while True:
            got = self.delta()
            if all(got[c] >= n for c, n in want.items()) or time.monotonic() >= deadline:
                break
            time.sleep(_COUNTER_POLL_S)  # polling interval of a deadline-bounded wait
        wrong = {_name(c): (got[c], n) for c, n in want.items() if got[c] != n}
        assert not wrong, f"counter deltas (got, want): {wrong}"


def _name(cell: tuple[str, int]) -> str:
    name, index = cell
    if name == "drops":
        return f"drops[{DropReason(index).name}]"
    if name == "job_drops":
        return f"job_drops[job {index // NUM_DROP_REASONS}, {DropReason(index % NUM_DROP_REASONS).name}]"
    return f"job_stats[job {index // NUM_JOB_STATS}, {JobStat(index % NUM_JOB_STATS).name}]"


@dataclass
class SwitchUnderTest:
    """A target with a freshly pushed pipeline and ``agg_addr`` set, plus its ports."""

    target: str
    session: P4RuntimeSession
    ports: PortSet
    agg: Endpoint = program.AGG

    def admit(self, *jobs: program.Job) -> None:
        """Install the ``workers``/``results`` entries and the RESULT multicast group of each job."""
        entities: list[object] = []
        for job in jobs:
            entities += program.worker_entries(job) + program.result_entries(job) + [program.job_group(job)]
        self.session.insert(entities)

    def readmit(self, job: program.Job) -> None:
        """Rewrite the job's ``workers`` entries (a new epoch, say) in place."""
        self.session.modify(program.worker_entries(job))

    def watch(self, *jobs: int) -> CounterWatch:
        return CounterWatch(self.session, jobs)

    def send_update(
        self,
        job: program.Job,
        worker: program.Worker,
        *,
        tsi: int,
        slot: int,
        set: int,
        lanes: np.ndarray,
        exp: int = 0,
        flags: int = 0,
        op: int = OP,
        key: int | None = None,
    ) -> None:
        """``worker`` sends an UPDATE, with its own key unless ``key`` gives another."""
        frame = update_frame(worker.endpoint, self.agg, job=job.job, tsi=tsi, slot=slot, set=set, lanes=lanes,
                             exp=exp, flags=flags, op=op, key=worker.key if key is None else key)
        self.ports.send(worker.port, frame)

    def expect_results(self, workers: Iterable[program.Worker], **kw: float) -> dict[int, bytes]:
        """Wait for exactly one frame per worker on its port (nothing else anywhere); frames by worker id.

        Frames on a port shared by several workers are told apart by UDP destination port.
        """
        workers = list(workers)
        counts: dict[int, int] = {}
        for w in workers:
            counts[w.port] = counts.get(w.port, 0) + 1
        got = self.ports.expect(counts, **kw)
        by_udp = {w.endpoint.udp_port: w for w in workers}
        out: dict[int, bytes] = {}
        for port, frames in got.items():
            for frame in frames:
                try:
                    w = by_udp[dst_port_of(frame)]
                except (KeyError, IndexError) as exc:
                    raise AssertionError(f"port {port}: frame for no expected worker: {frame.hex()}") from exc
                assert w.port == port, f"RESULT for worker {w.id} left port {port}, worker is behind {w.port}"
                assert w.id not in out, f"worker {w.id} got two frames"
                out[w.id] = frame
        return out

    def complete_round(
        self,
        job: program.Job,
        *,
        tsi: int,
        slot: int,
        set: int,
        lanes: Mapping[int, np.ndarray],
        exps: Mapping[int, int] | None = None,
        flags: Mapping[int, int] | None = None,
        ops: Mapping[int, int] | None = None,
        order: Iterable[int] | None = None,
        quiet: float = QUIET_S,
    ) -> np.ndarray:
        """Every worker sends its UPDATE (in ``order`` of worker ids); assert the RESULT each one gets.

        ``lanes``/``exps``/``flags``/``ops`` are by worker id (op ``OP`` where not given); returns the expected
        (int32-wrapped) sum. Each RESULT must carry the signed maximum exponent, the OR of the flags (with
        MISMATCH when the ops differ), the op of the first sender and the receiver's own key. A caller running
        many rounds may pass ``quiet=0``: a stray frame then shows up in the next round's check instead.
        """
        exps = exps or {}
        flags = flags or {}
        ops = ops or {}
        order = list(order) if order is not None else [w.id for w in job.workers]
        by_id = {w.id: w for w in job.workers}
        for wid in order:
            self.send_update(job, by_id[wid], tsi=tsi, slot=slot, set=set, lanes=lanes[wid],
                             exp=exps.get(wid, 0), flags=flags.get(wid, 0), op=ops.get(wid, OP))
        total = wrap_int32(np.sum([lanes[w.id].astype(np.int64) for w in job.workers], axis=0))
        want_exp = max(exps.get(w.id, 0) for w in job.workers)
        want_op = ops.get(order[0], OP)
        want_flags = 0
        for w in job.workers:
            want_flags |= flags.get(w.id, 0)
            if ops.get(w.id, OP) != want_op:
                want_flags |= Flag.MISMATCH
        results = self.expect_results(job.workers, quiet=quiet)
        for w in job.workers:
            assert_result(results[w.id], worker=w.endpoint, agg=self.agg, job=job.job, tsi=tsi, slot=slot, set=set,
                          exp=want_exp, flags=want_flags, key=w.key, op=want_op, lanes=total)
        return total


def random_lanes(seed: int, workers: Iterable[program.Worker], count: int) -> dict[int, np.ndarray]:
    """Full-range int32 lanes per worker id (their sums wrap around), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return {w.id: rng.integers(-(1 << 31), 1 << 31, size=count, dtype=np.int64).astype(np.int32) for w in workers}
