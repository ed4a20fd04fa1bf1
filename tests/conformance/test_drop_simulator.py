"""The drop simulator (``ingress_loss``/``egress_loss``): loss rate within binomial bounds, every loss counted.

Each UPDATE goes to its own slot of a one-worker job, so every UPDATE that survives completes a round and
produces exactly one RESULT: frames in = RESULTs out + simulated losses, frame for frame.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from netagg.constants import DropReason, JobStat

from . import program
from .frames import parse_result
from .harness import PORTS, CounterWatch, SwitchUnderTest
from .program import Job, make_workers

pytestmark = pytest.mark.netns

FRAMES = 1000
PROBABILITY = 0.2
BATCH = 100  # frames in flight at most: keeps the target's and our socket buffers from overflowing
#: Bounds at 5 standard deviations: a correct target fails this less than once in a million runs.
SIGMAS = 5.0
ACCOUNT_TIMEOUT_S = 20.0


@pytest.mark.parametrize("table", ["ingress_loss", "egress_loss"])
def test_loss_rate_is_binomial_and_every_loss_is_counted(sut: SwitchUnderTest, table: str) -> None:
    job = Job(job=9, workers=make_workers(9, 1, PORTS), pool_base=0, pool_size=FRAMES, size=0, epoch=1)
    worker = job.workers[0]
    sut.admit(job)
    sut.session.insert([program.loss_entry(table, worker.port, PROBABILITY)])
    lanes = np.arange(32, dtype=np.int32)
    watch = sut.watch(job.job)
    received: list[bytes] = []
    for start in range(0, FRAMES, BATCH):
        for slot in range(start, start + BATCH):
            sut.send_update(job, worker, tsi=slot, slot=slot, set=0, lanes=lanes)
        _wait_accounted(sut, watch, received, sent=start + BATCH, port=worker.port)
    lost = FRAMES - len(received)
    mean, sd = FRAMES * PROBABILITY, math.sqrt(FRAMES * PROBABILITY * (1 - PROBABILITY))
    assert abs(lost - mean) <= SIGMAS * sd, f"{lost} of {FRAMES} lost, expected {mean} +- {SIGMAS * sd:.0f}"
    slots = [parse_result(f).header.slot for f in received]
    assert len(set(slots)) == len(slots), "a slot was answered twice"
    survivors = FRAMES - lost if table == "ingress_loss" else FRAMES  # egress loss hits completed rounds
    watch.wait(drops={(job.job, DropReason.SIMULATED_LOSS): lost},
               stats={(job.job, JobStat.AGGREGATED): survivors, (job.job, JobStat.COMPLETED): survivors})
    sut.ports.expect_silence()


def _wait_accounted(sut: SwitchUnderTest, watch: CounterWatch, received: list[bytes], *, sent: int, port: int) -> None:
    """Collect RESULTs until RESULTs + counted losses == frames sent (deadline-bounded polling)."""
    deadline = time.monotonic() + ACCOUNT_TIMEOUT_S
    while True:
        for p, frames in sut.ports.take().items():
            assert p == port or not frames, f"{len(frames)} frames on port {p}, RESULTs go to port {port}"
            received.extend(frames)
        lost = watch.delta()[("drops", int(DropReason.SIMULATED_LOSS))]
        if len(received) + lost >= sent:
            assert len(received) + lost == sent, f"{len(received)} RESULTs + {lost} losses for {sent} frames"
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {ACCOUNT_TIMEOUT_S} s: {len(received)} RESULTs + {lost} losses, "
                                 f"{sent} frames sent")
        time.sleep(0.02)  # polling interval of a deadline-bounded wait
