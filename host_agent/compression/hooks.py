"""A DDP communication hook that sends gradients as stochastic-quantizer codes, exchanged by all-gather.

The codes of NUQSGD, QSGDinf, TernGrad, ALQ and AMQ are not summable by a switch (per-worker norms, and with ALQ or
AMQ per-worker levels), so each worker all-gathers every worker's payload and decodes and averages them itself. On
the netagg backend the all-gather is served by its internal gloo group; on any other backend by that backend.

    from netagg.host_agent.compression import quantizers
    from netagg.host_agent.compression.hooks import QuantizedState, quantized_allgather_hook

    state = QuantizedState(quantizers.alq(bits=3, bucket_size=1024), seed=rank)
    ddp_model.register_comm_hook(state, quantized_allgather_hook)

``state.bytes_sent`` counts the payload bytes this worker put on the wire and ``state.bytes_dense`` what a float32
all-reduce would have sent, so their ratio is the compression ratio. ALQ and AMQ refit their levels on the
schedule of ``state.schedule`` from the last few gradients of each DDP bucket.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from netagg.host_agent.compression.adaptive import LevelSchedule, refit
from netagg.host_agent.compression.quantizers import StochasticQuantizer

#: Gradients of a bucket kept for refitting adaptive levels.
FIT_SAMPLES = 3


@dataclass
class QuantizedState:
    """Hook state: the scheme, this worker's random stream, and the traffic counters."""

    quantizer: StochasticQuantizer
    seed: int = 0
    process_group: Any = None
    schedule: LevelSchedule = field(default_factory=LevelSchedule)
    bytes_sent: int = 0
    bytes_dense: int = 0
    steps: int = 0
    #: Sum over this worker's buckets of the closed-form E||Q(g) - g||^2: the noise its codes add to the sum.
    noise_added: float = 0.0
    _rng: np.random.Generator = field(init=False, repr=False)
    _per_bucket: dict[int, StochasticQuantizer] = field(default_factory=dict, repr=False)
    _samples: dict[int, deque[np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    @property
    def compression_ratio(self) -> float:
        return self.bytes_dense / self.bytes_sent if self.bytes_sent else 0.0

    def quantizer_for(self, index: int, gradient: np.ndarray) -> StochasticQuantizer:
        """The bucket's quantizer, refitted first when the schedule says so."""
        samples = self._samples.setdefault(index, deque(maxlen=FIT_SAMPLES))
        samples.append(gradient.astype(np.float32, copy=True))
        current = self._per_bucket.get(index, self.quantizer)
        if self.schedule.due(self.steps) and np.isfinite(gradient).all() and np.any(gradient):
            current = refit(current, samples)
        self._per_bucket[index] = current
        return current


# No `from __future__ import annotations` in this module: DDP checks the hook's annotations as objects.
def quantized_allgather_hook(state: QuantizedState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average the bucket's gradient over the workers from their quantized codes."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    grad = bucket.buffer()
    values = grad.detach().cpu()
    if values.dtype != torch.float32:
        values = values.float()
    flat = values.numpy().reshape(-1)
    quantizer = state.quantizer_for(bucket.index(), flat)
    if bucket.is_last():
        state.steps += 1  # after the step's last bucket: every bucket of a step sees the same step number
    payload, ctx = quantizer.compress(flat, state._rng)
    state.bytes_sent += payload.size
    state.bytes_dense += flat.nbytes
    state.noise_added += quantizer.variance(flat)
    mine = torch.from_numpy(payload)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    work = dist.all_gather(gathered, mine, group=group, async_op=True)

    def decode(_: Any) -> torch.Tensor:
        total = np.zeros(flat.size, np.float64)
        for part in gathered:
            total += quantizer.decompress(part.numpy(), ctx)
        mean = torch.from_numpy((total / world).astype(np.float32))
        grad.copy_(mean.view_as(grad))
        return grad

    return work.get_future().then(decode)
