"""CSER, communication-efficient SGD with error reset (Xie et al., NeurIPS 2020), and the methods it generalizes.

Each worker ``i`` keeps its local model ``x_i`` and a residual ``r_i`` such that ``x_i + r_i`` is the same on every
worker. One step of a worker is three phases, written once here and driven either in one process
(``simulate_step``: every worker in lockstep, for the reproduction) or across processes (``distributed_step``: one
``all_reduce`` per phase, over any backend; on netagg the sums go through the switch):

1. **Local step** (``local_step``): momentum ``m_i = beta m_i + g_i``, update ``u_i = lr * m_i``; then
   ``x_i -= u_i`` and ``r_i += u_i`` (``x_i + r_i`` unchanged).
2. **What to send** (``payload``): the chosen block of every tensor, concatenated. Every step the *gradient* phase
   sends block ``B1`` of ``u_i`` (compressor C1); every ``period`` steps the *model* phase sends block ``B2`` of
   ``r_i`` (compressor C2). A block is a contiguous run (cyclic) of ``round(fraction * numel)`` elements at a
   random start drawn from ``(seed, step, phase, tensor index)``: every worker picks the same block without
   communicating.
3. **Apply the mean** (``apply_mean``): with ``v_i`` the vector the phase sent (``u_i`` or ``r_i``) and ``mean`` the
   workers' average of ``v[B]``: ``x_i[B] += v_i[B] - mean`` and ``r_i[B] -= v_i[B]`` (for the model phase
   ``r_i[B] = 0``). Every worker's ``x_i + r_i`` moves by the same ``-mean``.

A worker stores ``z = x_i + r_i`` and ``r_i`` (``x_i = z - r_i``): ``z`` changes only by the means, which every worker
receives alike, so the invariant holds bit for bit and full SGD keeps bit-identical models.

The configurations (``Method``; docs/compression.md states each update rule):

* CSER: C1 and C2 both non-zero; gradients are taken at the local model ``x_i`` (error reset).
* CSER-PL (partial synchronization of the model only): C1 = 0.
* local SGD: C1 = 0, C2 the whole model every ``period`` steps (after which every ``x_i`` is equal and ``r_i = 0``).
* EF-SGD and QSparse-local-SGD: C1 = 0 and *error feedback*: the gradient is taken at ``x_i + e_i``, where ``e_i``
  is the residual as it stood after the last model phase (the error memory), so the residual left behind by the
  compressor is not applied locally but sent later. EF-SGD is the case ``period = 1``.
* full SGD: C1 the whole update every step.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


class Phase(enum.IntEnum):
    """What a phase all-reduces: a block of the fresh update (C1) or of the residual (C2)."""

    GRADIENT = 1
    MODEL = 2


@dataclass(frozen=True)
class Method:
    """A member of the CSER family: its compressors, period and whether it feeds the error back."""

    name: str
    #: Fraction of each tensor's elements the gradient phase (C1) sends every step; 0: no gradient phase.
    gradient_fraction: float
    #: Fraction of each tensor's elements the model phase (C2) sends every ``period`` steps; 0: no model phase.
    model_fraction: float
    period: int = 1
    #: Take gradients at ``x_i + e_i`` (EF-SGD, QSparse-local-SGD) instead of at ``x_i`` (error reset).
    error_feedback: bool = False

    def __post_init__(self) -> None:
        for label, value in (("gradient_fraction", self.gradient_fraction), ("model_fraction", self.model_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{self.name}: {label} must be in [0, 1], got {value}")
        if self.period < 1:
            raise ValueError(f"{self.name}: period must be at least 1 step, got {self.period}")
        if self.error_feedback and self.gradient_fraction:
            raise ValueError(f"{self.name}: error feedback methods synchronize the model only (gradient_fraction 0)")

    @property
    def nominal_ratio(self) -> float:
        """Elements of full SGD per element sent: ``1 / (C1 fraction + C2 fraction / period)``."""
        sent = self.gradient_fraction + self.model_fraction / self.period
        return float("inf") if sent == 0 else 1.0 / sent

    def phases(self, step: int) -> list[Phase]:
        """The phases of step ``step`` (counted from 0): the model phase closes every ``period``-th step."""
        out = [Phase.GRADIENT] if self.gradient_fraction else []
        if self.model_fraction and (step + 1) % self.period == 0:
            out.append(Phase.MODEL)
        return out


def full_sgd() -> Method:
    return Method("SGD", gradient_fraction=1.0, model_fraction=0.0)


def local_sgd(ratio: int) -> Method:
    """The whole model averaged every ``ratio`` steps."""
    return Method("local SGD", gradient_fraction=0.0, model_fraction=1.0, period=ratio)


def ef_sgd(ratio: int) -> Method:
    return Method("EF-SGD", gradient_fraction=0.0, model_fraction=1.0 / ratio, period=1, error_feedback=True)


def qsparse_local_sgd(ratio: int, period: int) -> Method:
    return Method("QSparse-local-SGD", 0.0, _fraction(period / ratio, ratio), period, error_feedback=True)


def cser_pl(ratio: int, period: int) -> Method:
    return Method("CSER-PL", 0.0, _fraction(period / ratio, ratio), period)


def cser(ratio: int, period: int, gradient_share: float = 0.5) -> Method:
    """CSER with ``gradient_share`` of the traffic in the gradient phase and the rest in the model phase."""
    if not 0.0 < gradient_share < 1.0:
        raise ValueError(f"CSER: gradient_share must be in (0, 1), got {gradient_share}")
    return Method(
        "CSER", gradient_share / ratio, _fraction((1 - gradient_share) * period / ratio, ratio), period
    )


def _fraction(value: float, ratio: int) -> float:
    if value > 1.0:
        raise ValueError(f"ratio {ratio} is below the period: the model phase would send more than the whole model")
    return value


@dataclass(frozen=True)
class Block:
    """A cyclic run of ``length`` elements from ``start`` in a tensor of ``numel`` elements."""

    start: int
    length: int
    numel: int

    def slices(self) -> list[slice]:
        first = min(self.length, self.numel - self.start)
        parts = [slice(self.start, self.start + first)]
        if first < self.length:
            parts.append(slice(0, self.length - first))
        return parts


def choose_blocks(sizes: Sequence[int], fraction: float, seed: int, step: int, phase: Phase) -> list[Block]:
    """One block per tensor, the same on every worker that passes the same arguments."""
    blocks = []
    for index, numel in enumerate(sizes):
        length = min(numel, max(1, round(fraction * numel)))
        start = int(np.random.default_rng([seed, step, int(phase), index]).integers(numel))
        blocks.append(Block(start, length, numel))
    return blocks


@dataclass
class CSERWorker:
    """One worker's state; ``params`` are its model's parameters, which hold the point gradients are taken at."""

    params: list[torch.Tensor]
    method: Method
    lr: float
    momentum: float = 0.9
    #: Shared by all workers: it decides the blocks.
    seed: int = 0
    step: int = 0
    #: Elements this worker has sent, and what full SGD would have sent over the same steps.
    elements_sent: int = 0
    elements_dense: int = 0
    #: ``z = x_i + r_i``, stored: the same on every worker (updated only by means every worker receives).
    z: list[torch.Tensor] = field(init=False, repr=False)
    r: list[torch.Tensor] = field(init=False, repr=False)
    _momentum: list[torch.Tensor] = field(init=False, repr=False)
    _update: list[torch.Tensor] = field(init=False, repr=False)
    _memory: list[torch.Tensor] = field(init=False, repr=False)
    _blocks: dict[Phase, list[Block]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        data = [p.detach() for p in self.params]
        self.z = [d.clone() for d in data]
        self.r = [torch.zeros_like(d) for d in data]
        self._momentum = [torch.zeros_like(d) for d in data]
        self._update = [torch.zeros_like(d) for d in data]
        self._memory = [torch.zeros_like(d) for d in data]

    @property
    def x(self) -> list[torch.Tensor]:
        """The local model ``x_i = z - r_i`` (the parameters, unless the method feeds the error back)."""
        return [z - r for z, r in zip(self.z, self.r, strict=True)]

    @property
    def sizes(self) -> list[int]:
        return [p.numel() for p in self.params]

    @property
    def compression_ratio(self) -> float:
        return self.elements_dense / self.elements_sent if self.elements_sent else float("inf")

    def local_step(self, grads: Sequence[torch.Tensor] | None = None) -> list[Phase]:
        """Phase 1 from ``grads`` (default: the parameters' ``.grad``); returns the step's communication phases."""
        grads = [p.grad for p in self.params] if grads is None else grads
        with torch.no_grad():
            for g, m, u, r in zip(grads, self._momentum, self._update, self.r, strict=True):
                m.mul_(self.momentum).add_(g)
                torch.mul(m, self.lr, out=u)
                r.add_(u)  # x_i -= u_i: z is unchanged
        self.elements_dense += sum(self.sizes)
        phases = self.method.phases(self.step)
        fraction = {Phase.GRADIENT: self.method.gradient_fraction, Phase.MODEL: self.method.model_fraction}
        self._blocks = {ph: choose_blocks(self.sizes, fraction[ph], self.seed, self.step, ph) for ph in phases}
        if not phases:
            self._finish_step()
        return phases

    def blocks(self, phase: Phase) -> list[Block]:
        return self._blocks[phase]

    def payload(self, phase: Phase) -> torch.Tensor:
        """Phase 2: the chosen block of every tensor of ``u_i`` (gradient phase) or ``r_i`` (model phase), flat."""
        source = self._update if phase is Phase.GRADIENT else self.r
        parts = [t.view(-1)[s] for t, b in zip(source, self._blocks[phase], strict=True) for s in b.slices()]
        out = torch.cat(parts).float()
        self.elements_sent += out.numel()
        return out

    def apply_mean(self, phase: Phase, mean: torch.Tensor) -> None:
        """Phase 3: ``x_i[B] += v_i[B] - mean``, ``r_i[B] -= v_i[B]``, for the phase's blocks in payload order.

        Kept as ``z[B] -= mean`` (the same on every worker) and ``r_i[B] -= v_i[B]``.
        """
        source = self._update if phase is Phase.GRADIENT else self.r
        sent = sum(b.length for b in self._blocks[phase])
        if mean.numel() != sent:
            raise ValueError(f"mean has {mean.numel()} elements, the {phase.name.lower()} phase sent {sent}")
        offset = 0
        with torch.no_grad():
            for v, z, r, b in zip(source, self.z, self.r, self._blocks[phase], strict=True):
                for s in b.slices():
                    n = s.stop - s.start
                    z.view(-1)[s] -= mean[offset : offset + n].to(z.dtype)
                    if v is r:
                        r.view(-1)[s] = 0
                    else:
                        r.view(-1)[s] -= v.view(-1)[s]
                    offset += n
        if phase is self.method.phases(self.step)[-1]:
            self._finish_step()

    def _finish_step(self) -> None:
        """Write the point the next gradient is taken at into the parameters: ``x_i``, or ``x_i + e_i``."""
        with torch.no_grad():
            if self.method.error_feedback and Phase.MODEL in self._blocks:
                for e, r in zip(self._memory, self.r, strict=True):
                    e.copy_(r)  # the error memory: what the compressor left behind at this model phase
            for p, z, r, e in zip(self.params, self.z, self.r, self._memory, strict=True):
                torch.sub(z, r, out=p.detach())
                if self.method.error_feedback:
                    p.detach().add_(e)
        self.step += 1


def simulate_step(workers: Sequence[CSERWorker], phases: Sequence[Phase]) -> None:
    """Phases 2 and 3 for workers that all ran ``local_step``: the mean computed in process, in float32."""
    for phase in phases:
        payloads = [w.payload(phase) for w in workers]
        mean = torch.stack(payloads).sum(0) / len(workers)
        for w in workers:
            w.apply_mean(phase, mean)


def distributed_step(worker: CSERWorker, phases: Sequence[Phase], group: dist.ProcessGroup | None = None) -> None:
    """Phases 2 and 3 across processes: one SUM all_reduce per phase (through the switch on netagg), then / world."""
    world = dist.get_world_size(group)
    for phase in phases:
        payload = worker.payload(phase)
        dist.all_reduce(payload, op=dist.ReduceOp.SUM, group=group)
        worker.apply_mean(phase, payload / world)


def averaged_model(workers: Sequence[CSERWorker]) -> list[torch.Tensor]:
    """The mean of the workers' local models ``x_i``: the model CSER evaluates."""
    return [torch.stack(xs).mean(0) for xs in zip(*(w.x for w in workers), strict=True)]


def distributed_averaged_model(worker: CSERWorker, group: dist.ProcessGroup | None = None) -> list[torch.Tensor]:
    """The mean of the workers' ``x_i``, on every worker (one all_reduce of the whole model)."""
    flat = torch.cat([x.reshape(-1) for x in worker.x]).float()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    return [part.view_as(p) for part, p in zip(flat.split(worker.sizes), worker.params, strict=True)]
