"""Statistics from the switch's counters, per job and per switch, by reason name.

Job ids are reused, and the counters of a job id keep counting across jobs, so a job's figures are the counters
minus a baseline read when the job was admitted. A pushed pipeline zeroes the counters; the baseline is then 0.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from netagg.constants import NUM_DROP_REASONS, NUM_JOB_STATS, DropReason, JobStat

from .errors import SwitchError
from .jobs import Job

log = logging.getLogger(__name__)

Counts = dict[int, tuple[int, int]]  # index -> (packets, bytes)

#: Finished jobs whose final figures stay readable (a short job can end before anyone asked).
FINISHED_MEMORY = 64


class CounterSource(Protocol):
    pipeline_generation: int

    def read_counter(self, name: str, indices: Sequence[int] | None = None) -> Counts: ...


def job_stat_indices(job_id: int) -> list[int]:
    return [job_id * NUM_JOB_STATS + s for s in JobStat]


def job_drop_indices(job_id: int) -> list[int]:
    return [job_id * NUM_DROP_REASONS + r for r in DropReason]


def _counts(packets: int, nbytes: int) -> dict[str, int]:
    return {"packets": packets, "bytes": nbytes}


def _diff(now: Counts, base: Counts, index: int) -> tuple[int, int]:
    p, b = now.get(index, (0, 0))
    bp, bb = base.get(index, (0, 0))
    return max(p - bp, 0), max(b - bb, 0)


def format_job(job: Job, stats: Counts, drops: Counts, base_stats: Counts, base_drops: Counts) -> dict[str, Any]:
    """One job's figures: each JobStat and each DropReason by lower-case name, as packets and bytes."""
    out: dict[str, Any] = {"job": job.name, "job_id": job.job_id}
    for stat in JobStat:
        out[stat.name.lower()] = _counts(*_diff(stats, base_stats, job.job_id * NUM_JOB_STATS + stat))
    out["drops"] = {
        reason.name.lower(): _counts(*_diff(drops, base_drops, job.job_id * NUM_DROP_REASONS + reason))
        for reason in DropReason
    }
    return out


def format_switch(drops: Counts) -> dict[str, Any]:
    return {"drops": {reason.name.lower(): _counts(*drops.get(int(reason), (0, 0))) for reason in DropReason}}


class StatsReader:
    """Reads the counters and keeps each job's baseline."""

    def __init__(self, source: CounterSource) -> None:
        self._source = source
        self._lock = threading.Lock()
        # job id -> (pipeline generation, job_stats baseline, job_drops baseline)
        self._baselines: dict[int, tuple[int, Counts, Counts]] = {}
        # job name -> its final figures, read at teardown, oldest first
        self._finished: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def mark_start(self, job: Job) -> None:
        """Record the job id's counters at admission."""
        generation = self._source.pipeline_generation
        try:
            stats = self._source.read_counter("job_stats", job_stat_indices(job.job_id))
            drops = self._source.read_counter("job_drops", job_drop_indices(job.job_id))
        except SwitchError as ex:
            log.warning("cannot read counters for job %r at admission (%s); its stats start at the raw counters",
                        job.name, ex)
            stats, drops = {}, {}
        with self._lock:
            self._baselines[job.job_id] = (generation, stats, drops)
            self._finished.pop(job.name, None)

    def mark_end(self, job: Job) -> None:
        """Keep the job's final figures (read before its id can be reused) for later stats calls."""
        try:
            stats = self._source.read_counter("job_stats", job_stat_indices(job.job_id))
            drops = self._source.read_counter("job_drops", job_drop_indices(job.job_id))
        except SwitchError as ex:
            log.warning("cannot read the final counters of job %r (%s); its figures are not kept", job.name, ex)
            return
        base_stats, base_drops = self._baseline(job.job_id)
        figures = format_job(job, stats, drops, base_stats, base_drops)
        figures["state"] = "finished"
        with self._lock:
            self._finished[job.name] = figures
            self._finished.move_to_end(job.name)
            while len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)

    def _baseline(self, job_id: int) -> tuple[Counts, Counts]:
        with self._lock:
            generation, stats, drops = self._baselines.get(job_id, (-1, {}, {}))
        if generation != self._source.pipeline_generation:
            return {}, {}
        return stats, drops

    def collect(self, jobs: Sequence[Job]) -> dict[str, Any]:
        """{"switch": {"drops": ...}, "jobs": {name: ...}}: the given active jobs, then recently finished ones.

        Each job's figures carry ``"state"``: ``"active"``, or ``"finished"`` (final, read at teardown).
        """
        drops = self._source.read_counter("drops")
        result: dict[str, Any] = {"switch": format_switch(drops), "jobs": {}}
        if jobs:
            stats = self._source.read_counter("job_stats")
            job_drops = self._source.read_counter("job_drops")
            for job in jobs:
                base_stats, base_drops = self._baseline(job.job_id)
                result["jobs"][job.name] = format_job(job, stats, job_drops, base_stats, base_drops)
                result["jobs"][job.name]["state"] = "active"
        with self._lock:
            finished = list(self._finished.items())
        for name, figures in finished:
            result["jobs"].setdefault(name, figures)
        return result
