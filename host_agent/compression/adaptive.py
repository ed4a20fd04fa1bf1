"""Levels fitted to the gradients: ALQ (any levels, coordinate descent) and AMQ (levels p**k, gradient descent).

Faghri et al. (NeurIPS 2020) model the normalized magnitudes ``r = |v_i| / ||bucket||`` of one bucket as a normal
distribution truncated to [0, 1], and the whole gradient as the mixture of its buckets' distributions weighted by
the buckets' squared norms (a bucket's quantization variance scales with its squared norm). The expected
normalized variance of levels ``l`` under that mixture is

    V(l) = d * sum_k w_k * sum_j E_k[(l_j+1 - r) (r - l_j); l_j <= r < l_j+1]

(d the bucket size), which the moments of a truncated normal give in closed form. ALQ lowers V one level at a time:
with its neighbours fixed, V is smallest where

    E[(r - l_j-1); l_j-1 <= r < l_j]  =  E[(l_j+1 - r); l_j <= r < l_j+1]

(the left side grows with l_j, the right side shrinks: bisection finds it), and sweeps until the levels stop moving.
Coordinate descent finds a local minimum, so ALQ starts from several level sets (uniform, exponential, the current
ones) and keeps the one of lowest V. AMQ keeps levels ``p**(s-j)`` and descends V along p.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from netagg.host_agent.compression.quantizers import (
    Norm,
    StochasticQuantizer,
    check_levels,
    exponential_levels,
    power_levels,
    uniform_levels,
)

#: Smallest standard deviation a bucket's model gets (a constant bucket would otherwise be a point mass).
MIN_STD = 1e-4

#: ALQ's sweeps over the levels stop when no level moves more than this, or after MAX_SWEEPS.
TOLERANCE = 1e-6
MAX_SWEEPS = 100

#: Halvings of the bracket when solving for one level (2**-40 of the interval: far below float32's resolution).
BISECTIONS = 40

#: Most mixture components kept (the heaviest buckets); more add little to the fit and cost time.
MAX_COMPONENTS = 4096


def _pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)


@dataclass(frozen=True)
class Mixture:
    """The norm-weighted mixture of truncated normals that models a gradient's normalized coordinates."""

    weights: np.ndarray  # (K,), summing to 1
    means: np.ndarray  # (K,)
    stds: np.ndarray  # (K,)
    bucket_size: int

    @classmethod
    def from_gradients(cls, gradients: Iterable[np.ndarray], bucket_size: int, norm: Norm = Norm.L2) -> Mixture:
        """Fit one component per bucket of each gradient (a few fresh minibatch gradients are enough)."""
        probe = StochasticQuantizer("fit", 3, bucket_size, uniform_levels(3), norm)
        weights, means, stds = [], [], []
        for g in gradients:
            flat = np.asarray(g, dtype=np.float64).reshape(-1)
            _, norms, r = probe.normalize(flat)
            fill = np.zeros(r.shape, bool)
            fill.reshape(-1)[: flat.size] = True  # the last bucket's padding is not data
            counts = fill.sum(axis=1)
            ok = np.isfinite(norms) & (norms > 0)
            mean = np.where(fill, r, 0).sum(axis=1) / counts
            var = np.where(fill, (r - mean[:, None]) ** 2, 0).sum(axis=1) / counts
            weights.append(norms[ok] ** 2)
            means.append(mean[ok])
            stds.append(np.maximum(np.sqrt(var[ok]), MIN_STD))
        w = np.concatenate(weights) if weights else np.zeros(0)
        if w.size == 0 or not np.sum(w) > 0:
            raise ValueError("cannot fit levels: every gradient given was empty, zero or non-finite")
        mu, sd = np.concatenate(means), np.concatenate(stds)
        if w.size > MAX_COMPONENTS:
            keep = np.argsort(w)[-MAX_COMPONENTS:]
            w, mu, sd = w[keep], mu[keep], sd[keep]
        return cls(w / w.sum(), mu, sd, bucket_size)

    def _moments(self, a: float, c: float) -> tuple[float, float, float]:
        """Weighted sums over the components of P(a <= r < c), E[r; a <= r < c] and E[r^2; a <= r < c]."""
        mu, sd = self.means, self.stds
        alpha, beta = (a - mu) / sd, (c - mu) / sd
        pa, pb = _pdf(alpha), _pdf(beta)
        p = ndtr(beta) - ndtr(alpha)
        m1 = mu * p - sd * (pb - pa)
        m2 = (mu * mu + sd * sd) * p - sd * ((c + mu) * pb - (a + mu) * pa)
        z = ndtr((1.0 - mu) / sd) - ndtr(-mu / sd)  # the truncation to [0, 1]
        w = self.weights / z
        return float(w @ p), float(w @ m1), float(w @ m2)

    def interval_variance(self, a: float, c: float) -> float:
        """E[(c - r)(r - a); a <= r < c] under the mixture."""
        p, m1, m2 = self._moments(a, c)
        return -a * c * p + (a + c) * m1 - m2

    def expected_variance(self, levels: np.ndarray) -> float:
        """V(levels): the expected normalized variance of quantizing with ``levels``."""
        return self.bucket_size * sum(
            self.interval_variance(a, c) for a, c in zip(levels[:-1], levels[1:], strict=True)
        )


def fit_alq(mixture: Mixture, bits: int, start: np.ndarray | None = None) -> np.ndarray:
    """ALQ's levels: coordinate descent from several starting points, the lowest V kept."""
    starts = [exponential_levels(bits), uniform_levels(bits)]
    if start is not None:
        starts.append(check_levels(start, bits))
    fitted = [_coordinate_descent(mixture, s.copy()) for s in starts]
    return min(fitted, key=mixture.expected_variance)


def _coordinate_descent(mixture: Mixture, levels: np.ndarray) -> np.ndarray:
    for _ in range(MAX_SWEEPS):
        moved = 0.0
        for j in range(1, levels.size - 1):
            left, right = levels[j - 1], levels[j + 1]

            def balance(x: float, left: float = left, right: float = right) -> float:
                p_l, m_l, _ = mixture._moments(left, x)
                p_r, m_r, _ = mixture._moments(x, right)
                return (m_l - left * p_l) - (right * p_r - m_r)

            lo, hi = left, right
            for _ in range(BISECTIONS):
                mid = 0.5 * (lo + hi)
                if balance(mid) < 0:
                    lo = mid
                else:
                    hi = mid
            new = 0.5 * (lo + hi)
            moved = max(moved, abs(new - levels[j]))
            levels[j] = new
        if moved < TOLERANCE:
            break
    return levels


def fit_amq(mixture: Mixture, bits: int, p: float = 0.5, steps: int = 200) -> float:
    """AMQ's ratio p: gradient descent on V(p) (central differences, backtracking step), p kept in (0, 1)."""

    def v(x: float) -> float:
        return mixture.expected_variance(power_levels(bits, x))

    lo, hi, h = 1e-3, 1 - 1e-3, 1e-5
    p = float(np.clip(p, lo + h, hi - h))
    step = 0.1
    current = v(p)
    for _ in range(steps):
        grad = (v(p + h) - v(p - h)) / (2 * h)
        if grad == 0.0:
            break
        while step > 1e-9:
            candidate = float(np.clip(p - step * np.sign(grad) * min(1.0, abs(grad)), lo + h, hi - h))
            value = v(candidate)
            if value < current:
                p, current = candidate, value
                step *= 1.5
                break
            step *= 0.5
        else:
            break
    return p


def refit(quantizer: StochasticQuantizer, gradients: Iterable[np.ndarray]) -> StochasticQuantizer:
    """An ALQ or AMQ quantizer with its levels fitted to ``gradients`` (other schemes are returned unchanged)."""
    if quantizer.name not in ("ALQ", "AMQ"):
        return quantizer
    mixture = Mixture.from_gradients(gradients, quantizer.bucket_size, quantizer.norm)
    if quantizer.name == "ALQ":
        return quantizer.with_levels(fit_alq(mixture, quantizer.bits, quantizer.levels))
    current_p = quantizer.levels[-2] if quantizer.levels.size > 2 else 0.5
    return quantizer.with_levels(power_levels(quantizer.bits, fit_amq(mixture, quantizer.bits, current_p)))


@dataclass(frozen=True)
class LevelSchedule:
    """When adaptive levels are refitted: at the given early steps, then every ``every`` steps."""

    early: tuple[int, ...] = (0, 20, 100)
    every: int = 500

    def due(self, step: int) -> bool:
        return step in self.early or (self.every > 0 and step > 0 and step % self.every == 0)
