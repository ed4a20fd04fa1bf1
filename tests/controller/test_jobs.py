"""The application layer without a switch: admission, errors, epochs, keys, leave, lease expiry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from netagg.constants import MAX_JOBS, MAX_WORKERS
from netagg.controller import errors
from netagg.controller.epochs import MAX_EPOCH, EpochCounter
from netagg.controller.jobs import Job, JobManager, JoinRequest, new_key
from netagg.controller.pool import SlotRange

pytestmark = pytest.mark.unit


class Recorder:
    """A JobProgrammer that records calls; can be told to fail installs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail: errors.SwitchError | None = None

    def install_job(self, job: Job) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append(("install", job.name, job.job_id))

    def remove_job(self, job: Job) -> None:
        self.calls.append(("remove", job.name, job.job_id))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def req(job: str = "j", rank: int = 0, world_size: int = 1, **kw: Any) -> JoinRequest:
    args: dict[str, Any] = {"addr": f"10.0.0.{rank % 3 + 1}", "port": 5000 + rank, "lanes": 64, "timeout": 5.0}
    args.update(kw)
    return JoinRequest(job=job, world_size=world_size, rank=rank, **args)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(topology, recorder: Recorder, clock: Clock) -> JobManager:
    return JobManager(topology, recorder, clock=clock)


def join_all(manager: JobManager, requests: list[JoinRequest]) -> list[Any]:
    """Join every request in its own thread; returns each one's Admission or exception, in order."""
    results: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        try:
            results[i] = manager.join(requests[i])
        except Exception as ex:  # noqa: BLE001 - collected for the assertions
            results[i] = ex

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "join did not return"
    return results


def test_single_rank_job_is_admitted_at_once(manager: JobManager, recorder: Recorder) -> None:
    admission = manager.join(req("solo", slots=8))
    assert recorder.calls == [("install", "solo", 0)]
    job = admission.job
    assert (job.job_id, job.world_size, job.lanes, job.pool.base, job.pool.slots) == (0, 1, 64, 0, 8)
    assert job.epoch == 1 and job.size_code == 1
    assert job.workers[0].switch_port == 1 and job.workers[0].mac == "02:00:00:00:00:01"
    body = admission.to_json()
    assert body["switch"] == {"mac": "02:00:00:00:00:fe", "addr": "10.0.0.254", "port": 48864}
    assert body["worker_id"] == 0 and body["slots"] == 8
    assert body["key"] == job.workers[0].key != 0


def test_concurrent_ranks_install_once(manager: JobManager, recorder: Recorder) -> None:
    results = join_all(manager, [req("j", rank=r, world_size=4) for r in (3, 1, 0, 2)])
    assert recorder.calls == [("install", "j", 0)]
    assert sorted(a.worker_id for a in results) == [0, 1, 2, 3]
    assert len({a.job.epoch for a in results}) == 1
    job = results[0].job
    assert [w.rank for w in job.workers] == [0, 1, 2, 3]
    assert job.pool.slots == 16  # the topology's default


def test_jobs_get_disjoint_ranges_distinct_ids(manager: JobManager) -> None:
    a = manager.join(req("a", slots=10)).job
    b = manager.join(req("b", slots=20)).job
    assert (a.job_id, b.job_id) == (0, 1)
    assert a.pool.end <= b.pool.base
    assert a.epoch != b.epoch


def test_reused_range_gets_a_new_epoch(manager: JobManager) -> None:
    first = manager.join(req("a", slots=16)).job
    manager.leave("a", 0)
    second = manager.join(req("b", slots=16)).job
    assert second.pool == first.pool and second.job_id == first.job_id
    assert second.epoch not in (0, first.epoch)


@pytest.mark.parametrize(
    ("request_", "error", "words"),
    [
        (req(world_size=MAX_WORKERS + 1), errors.WorldSizeOutOfRange, ["'j'", "rank 0", "33", f"1..{MAX_WORKERS}"]),
        (req(world_size=0), errors.WorldSizeOutOfRange, ["'j'", "world size of 0"]),
        (req(rank=4, world_size=4), errors.RankOutOfRange, ["'j'", "rank 4", "world size of 4"]),
        (req(lanes=100), errors.UnsupportedLanes, ["'j'", "rank 0", "100 lanes", "32, 64, 128, 256"]),
        (req(addr="10.9.9.9"), errors.UnknownHost, ["'j'", "rank 0", "10.9.9.9", "10.0.0.1"]),
        (req(port=0), errors.BadPort, ["'j'", "rank 0", "port 0"]),
        (req(port=70000), errors.BadPort, ["70000"]),
        (req(mac="02:00:00:00:00:99"), errors.MacMismatch, ["rank 0", "02:00:00:00:00:99", "02:00:00:00:00:01"]),
        (req(slots=65), errors.BadSlotCount, ["rank 0", "65 slots", "1..64"]),
    ],
)
def test_admission_errors_name_job_rank_and_number(
    manager: JobManager, request_: JoinRequest, error: type, words: list[str]
) -> None:
    with pytest.raises(error) as info:
        manager.join(request_)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, errors.AdmissionError)


@pytest.mark.parametrize(
    ("second", "error", "words"),
    [
        (req(rank=0, world_size=2, port=6000), errors.DuplicateRank, ["'j'", "rank 0 has already joined"]),
        (req(rank=1, world_size=3), errors.WorldSizeMismatch, ["rank 1", "world size is 3", "say 2"]),
        (req(rank=1, world_size=2, lanes=128), errors.ParameterMismatch, ["rank 1", "lanes = 128", "64"]),
        (req(rank=1, world_size=2, addr="10.0.0.1", port=5000), errors.DuplicateEndpoint,
         ["rank 1", "10.0.0.1:5000", "rank 0"]),
    ],
)
def test_disagreeing_ranks(manager: JobManager, second: JoinRequest, error: type, words: list[str]) -> None:
    outcome: list[Any] = []
    waiter = threading.Thread(target=lambda: outcome.append(manager.join(req(rank=0, world_size=2, timeout=20))))
    waiter.start()
    try:
        _wait_for(lambda: manager.describe() != [])
        with pytest.raises(error) as info:
            manager.join(second)
        for word in words:
            assert word in str(info.value)
    finally:
        # The refused join must not have disturbed the job: the right rank 1 completes it.
        manager.join(req(rank=1, world_size=2, port=7000))
        waiter.join(10)
    assert outcome and outcome[0].worker_id == 0


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not condition():
            if done.wait(0.01):
                raise AssertionError("condition not met in time")
    finally:
        deadline.cancel()


def test_pool_exhausted_says_free_and_asked(manager: JobManager) -> None:
    manager.join(req("a", slots=40))
    with pytest.raises(errors.PoolExhausted) as info:
        manager.join(req("b", rank=0, slots=30))
    text = str(info.value)
    assert "'b'" in text and "rank 0" in text and "30 slots" in text and "only 24 slots" in text


def test_job_ids_exhausted(manager: JobManager) -> None:
    # The test pool (64 slots) runs out long before 256 job ids do: take the ids directly.
    manager._job_ids = set(range(MAX_JOBS))
    with pytest.raises(errors.JobIdsExhausted) as info:
        manager.join(req("late"))
    assert "'late'" in str(info.value) and f"all {MAX_JOBS} job ids" in str(info.value)


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), float("-inf")])
def test_a_join_timeout_that_is_not_finite_is_refused(manager: JobManager, timeout: float) -> None:
    # NaN compares false with everything: its deadline would never pass, and the partial job never go away.
    with pytest.raises(errors.BadTimeout, match="rank 1 gives a join timeout of"):
        manager.join(req("j", rank=1, world_size=2, timeout=timeout))
    assert manager.describe() == [] and manager.pool_view()["free"] == 64


def test_a_lease_that_is_not_finite_is_refused(topology, recorder: Recorder) -> None:
    for lease in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(errors.ConfigError, match="must be a finite number of seconds > 0"):
            JobManager(topology, recorder, lease_seconds=lease)


def test_join_after_start_is_refused(manager: JobManager) -> None:
    manager.join(req("a"))
    with pytest.raises(errors.JobAlreadyStarted, match="'a' has already started.*rank 0"):
        manager.join(req("a"))


def test_deadline_drops_partial_job_so_retry_works(manager: JobManager, recorder: Recorder) -> None:
    with pytest.raises(errors.JoinTimeout) as info:
        manager.join(req("j", rank=1, world_size=3, timeout=0.2))
    assert "missing: 0, 2" in str(info.value) and "2 of 3 ranks" in str(info.value)
    assert manager.describe() == [] and manager.pool_view()["free"] == 64
    results = join_all(manager, [req("j", rank=r, world_size=3) for r in range(3)])
    assert all(not isinstance(r, Exception) for r in results)
    assert recorder.calls == [("install", "j", 0)]


def test_other_waiters_are_told_when_a_deadline_drops_the_job(manager: JobManager) -> None:
    results = join_all(manager, [req("j", rank=0, world_size=3, timeout=5.0),
                                 req("j", rank=1, world_size=3, timeout=0.3)])
    assert isinstance(results[1], errors.JoinTimeout)
    assert isinstance(results[0], errors.JoinAborted) and "rank 0" in str(results[0])


def test_switch_failure_fails_every_rank_and_frees_the_range(manager: JobManager, recorder: Recorder) -> None:
    recorder.fail = errors.SwitchError("insert", "RESOURCE_EXHAUSTED", "table full")
    results = join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["JoinAborted", "SwitchError"]
    assert manager.pool_view()["free"] == 64 and manager.describe() == []


def test_any_install_failure_fails_every_rank_and_frees_the_range(manager: JobManager, recorder: Recorder) -> None:
    # Not a SwitchError (an entry the P4Info cannot encode, a bug): the waiting ranks must not wait forever.
    recorder.fail = ValueError("'set_worker': no action parameter named 'key'")  # type: ignore[assignment]
    results = join_all(manager, [req("j", rank=r, world_size=2, timeout=30) for r in range(2)])
    assert sorted(type(r).__name__ for r in results) == ["JoinAborted", "ValueError"]
    assert manager.pool_view()["free"] == 64 and manager.describe() == []


def test_leave_tears_down_when_all_left(manager: JobManager, recorder: Recorder) -> None:
    join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])
    assert manager.leave("j", 1) == 1
    assert manager.leave("j", 1) == 1  # leaving twice is harmless
    assert manager.leave("j", 0) == 0
    assert recorder.calls[-1] == ("remove", "j", 0)
    assert manager.pool_view()["free"] == 64
    with pytest.raises(errors.UnknownJob, match="every rank left"):
        manager.heartbeat("j", 0)
    with pytest.raises(errors.UnknownJob):
        manager.leave("j", 0)


def test_heartbeat_unknown_rank_and_job(manager: JobManager) -> None:
    manager.join(req("a"))
    manager.heartbeat("a", 0)
    with pytest.raises(errors.UnknownRank, match="no rank 3"):
        manager.heartbeat("a", 3)
    with pytest.raises(errors.UnknownJob, match="never admitted"):
        manager.heartbeat("nope", 0)


def test_silent_rank_expires_job(manager: JobManager, recorder: Recorder, clock: Clock) -> None:
    join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])
    clock.now += 20
    manager.heartbeat("j", 0)
    assert manager.expire() == []
    clock.now += 11  # rank 1 silent for 31 s > 30 s lease; rank 0 for 11 s
    assert manager.expire() == ["j"]
    assert recorder.calls[-1] == ("remove", "j", 0)
    with pytest.raises(errors.UnknownJob, match="rank 1 was silent for 31.0 s"):
        manager.heartbeat("j", 0)
    assert manager.pool_view()["free"] == 64


def test_ranks_that_left_need_no_heartbeat(manager: JobManager, clock: Clock) -> None:
    join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])
    manager.leave("j", 1)
    clock.now += 25
    manager.heartbeat("j", 0)
    clock.now += 25
    assert manager.expire() == []


# --- keys ------------------------------------------------------------------------------------------------------


def test_each_rank_learns_its_own_key_only(manager: JobManager) -> None:
    results = join_all(manager, [req("j", rank=r, world_size=3) for r in range(3)])
    job = results[0].job
    keys = [w.key for w in job.workers]
    assert 0 not in keys and len(set(keys)) == 3
    for admission in results:
        body = admission.to_json()
        assert body["key"] == keys[admission.worker_id]
        assert not any(k in body.values() for k in keys if k != body["key"])
    # The listing and every repr (log lines, tracebacks) leave the keys out.
    text = repr(manager.describe()) + repr(job) + repr(results[0])
    assert "key" not in text and not any(str(k) in text for k in keys)


def test_a_new_job_of_the_same_ranks_gets_new_keys(manager: JobManager) -> None:
    first = join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])[0].job
    for rank in range(2):
        manager.leave("j", rank)
    second = join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])[0].job
    assert not {w.key for w in first.workers} & {w.key for w in second.workers}


def test_a_key_is_never_zero() -> None:
    draws = iter([0, 0, 0x5EC2E7])
    assert new_key(lambda bits: next(draws)) == 0x5EC2E7
    assert all(0 < new_key() < 2**32 for _ in range(1000))


# --- epochs ----------------------------------------------------------------------------------------------------


class SlotCopies:
    """What the switch's ``slot_epoch`` registers hold: per (set, slot) copy, the epoch of the last job that wrote
    it (0 after a push). A job writes only the copies it sends on."""

    def __init__(self) -> None:
        self.epoch: dict[tuple[int, int], int] = {}
        self.history: dict[tuple[int, int], list[int]] = {}

    def held(self, pool: SlotRange) -> set[int]:
        return {self.epoch.get((copy, slot), 0) for slot in range(pool.base, pool.end) for copy in (0, 1)}

    def send(self, job: Job, slots: range, copies: tuple[int, ...] = (0, 1)) -> None:
        for slot in slots:
            for copy in copies:
                key = (copy, job.pool.base + slot)
                self.epoch[key] = job.epoch
                self.history.setdefault(key, []).append(job.epoch)


def admit_fresh(manager: JobManager, copies: SlotCopies, name: str, slots: int) -> Job:
    """Admit a one-rank job and check that no copy of its range holds its epoch (else the copy would count as
    live state of this job: a stuck slot, or an earlier job's sum as the answer to a retransmission)."""
    job = manager.join(req(name, slots=slots)).job
    assert job.epoch != 0 and job.epoch not in copies.held(job.pool), (name, job.epoch, job.pool)
    return job


def test_a_range_left_unwritten_keeps_its_epoch_and_no_later_job_gets_it(topology, recorder: Recorder) -> None:
    # The 16-bit epochs of wire format v1 were chosen to differ from the epoch *recorded* for the range, i.e. that of
    # the range's last job. Job "a" writes every copy of slots 0..15; job "b" gets the same range but sends on
    # slot 0 only, so copies of slots 1..15 keep "a"'s epoch. The jobs after it on that range send nothing; once
    # the 16-bit counter went round, one of them was handed "a"'s epoch again, and the copies it never wrote
    # counted as its live state.
    manager = JobManager(topology, recorder)
    copies = SlotCopies()
    a = admit_fresh(manager, copies, "a", 16)
    copies.send(a, range(16))
    manager.leave("a", 0)
    b = admit_fresh(manager, copies, "b", 16)
    assert b.pool == a.pool
    copies.send(b, range(1))
    manager.leave("b", 0)
    for i in range(2**16 + 2):
        job = admit_fresh(manager, copies, f"idle{i}", 16)
        manager.leave(job.name, 0)
    assert copies.held(a.pool) == {a.epoch, b.epoch}
    assert job.pool == a.pool and job.epoch > 2**16


def test_the_end_of_the_epochs_is_refused_never_wrapped(topology, recorder: Recorder) -> None:
    # Start 7 epochs before the end, through the constructor, rather than after 2**32 admissions.
    manager = JobManager(topology, recorder, epochs=EpochCounter(last=MAX_EPOCH - 7))
    copies = SlotCopies()
    shapes = [(16, range(16)), (8, range(3)), (40, range(40)), (4, range(0)), (24, range(24, 24)), (64, range(64)),
              (12, range(12))]
    for i, (slots, sent) in enumerate(shapes):
        job = admit_fresh(manager, copies, f"j{i}", slots)
        copies.send(job, sent)
        manager.leave(job.name, 0)
    assert job.epoch == MAX_EPOCH
    # No copy ever held the same epoch twice: each one's history only grows.
    for history in copies.history.values():
        assert all(x < y for x, y in zip(history, history[1:]))
    installs = len(recorder.calls)
    with pytest.raises(errors.EpochsExhausted) as info:
        manager.join(req("late", slots=8))
    text = str(info.value)
    assert "'late'" in text and "rank 0" in text and str(MAX_EPOCH) in text
    assert "Restart the switch pipeline" in text
    assert isinstance(info.value, errors.AdmissionError) and info.value.http_status == 503
    # Nothing was installed, and the refused job holds nothing.
    assert len(recorder.calls) == installs
    assert manager.describe() == [] and manager.pool_view()["free"] == 64 and manager.pool_view()["epochs_left"] == 0


def test_every_rank_of_a_refused_job_hears_why(topology, recorder: Recorder) -> None:
    manager = JobManager(topology, recorder, epochs=EpochCounter(last=MAX_EPOCH))
    results = join_all(manager, [req("j", rank=r, world_size=2) for r in range(2)])
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["EpochsExhausted", "JoinAborted"]
    aborted = next(r for r in results if isinstance(r, errors.JoinAborted))
    assert "Restart the switch pipeline" in str(aborted)


def test_epochs_are_given_back_once_the_job_is_off_the_switch(topology, recorder: Recorder) -> None:
    epochs = EpochCounter()
    manager = JobManager(topology, recorder, epochs=epochs)
    kept = manager.join(req("kept")).job
    gone = manager.join(req("gone")).job
    manager.leave("gone", 0)
    recorder.fail = errors.SwitchError("insert", "RESOURCE_EXHAUSTED", "table full")
    with pytest.raises(errors.SwitchError):
        manager.join(req("failed"))
    # A push now: only "kept" can write its epoch into a copy again, so the counter restarts just above it.
    epochs.pipeline_pushed()
    assert epochs.last == kept.epoch < gone.epoch
