"""The stochastic quantizers: unbiased, variance as in closed form, codes packed losslessly, levels that fit."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.host_agent.compression import adaptive as A
from netagg.host_agent.compression import quantizers as Q

pytestmark = pytest.mark.unit

BITS = 3
BUCKET = 64
DRAWS = 4000

SCHEMES = {
    "NUQSGD": lambda: Q.nuqsgd(BITS, BUCKET),
    "QSGDinf": lambda: Q.qsgdinf(BITS, BUCKET),
    "TRN": lambda: Q.terngrad(BUCKET),
    "ALQ": lambda: Q.alq(BITS, BUCKET, [0.0, 0.05, 0.2, 1.0]),
    "AMQ": lambda: Q.amq(BITS, BUCKET, 0.3),
}


def gradient_like(count: int, seed: int) -> np.ndarray:
    """Heavy-tailed values around zero, as layer gradients are (a normal scaled by a log-normal)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(count) * np.exp(rng.standard_normal(count))).astype(np.float32)


def per_coordinate_variance(q: Q.StochasticQuantizer, x: np.ndarray) -> np.ndarray:
    _, norms, r = q.normalize(x)
    j = q._interval(r)
    var = norms[:, None].astype(np.float64) ** 2 * (q.levels[j + 1] - r) * (r - q.levels[j])
    return var.reshape(-1)[: x.size]


@pytest.mark.parametrize("name", ["NUQSGD", "QSGDinf", "ALQ", "AMQ"])
def test_mean_of_many_quantizations_is_the_input(name: str) -> None:
    q = SCHEMES[name]()
    x = gradient_like(3 * BUCKET + 5, seed=1)
    rng = np.random.default_rng(2)
    mean = np.mean([q.dequantize(q.quantize(x, rng)).astype(np.float64) for _ in range(DRAWS)], axis=0)
    # Each coordinate's mean has standard deviation sqrt(var / DRAWS); 6 of those is a bound no seed should break.
    bound = 6 * np.sqrt(per_coordinate_variance(q, x) / DRAWS) + 1e-5 * np.abs(x) + 1e-7
    assert np.all(np.abs(mean - x) <= bound), np.max(np.abs(mean - x) / bound)


def test_terngrad_is_unbiased_for_the_clipped_bucket_and_ternary() -> None:
    q = SCHEMES["TRN"]()
    x = gradient_like(BUCKET, seed=3)
    bound = Q.TERNGRAD_CLIP_SIGMAS * x.astype(np.float64).std()
    clipped = np.clip(x.astype(np.float64), -bound, bound)
    rng = np.random.default_rng(4)
    draws = np.array([q.dequantize(q.quantize(x, rng)) for _ in range(DRAWS)], dtype=np.float64)
    scale = np.max(np.abs(clipped))
    assert set(np.unique(np.round(draws / scale, 5))) <= {-1.0, 0.0, 1.0}
    tol = 6 * np.sqrt(per_coordinate_variance(q, x) / DRAWS) + 1e-5 * scale
    assert np.all(np.abs(draws.mean(axis=0) - clipped) <= tol)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_variance_equals_its_closed_form(name: str) -> None:
    q = SCHEMES[name]()
    x = gradient_like(2 * BUCKET, seed=5)
    rng = np.random.default_rng(6)
    errors = [np.sum((q.dequantize(q.quantize(x, rng)).astype(np.float64) - x) ** 2) for _ in range(DRAWS)]
    closed = q.variance(x)
    # The empirical mean of DRAWS squared errors: within 5 standard errors of the expectation.
    assert abs(np.mean(errors) - closed) <= 5 * np.std(errors) / np.sqrt(DRAWS) + 1e-3 * closed
    assert q.normalized_variance(x) == pytest.approx(closed / np.sum(x.astype(np.float64) ** 2))


def test_variance_of_a_value_on_a_level_is_zero() -> None:
    q = Q.qsgdinf(BITS, 4)
    x = np.array([1.0, -1.0 / 3, 2.0 / 3, 0.0], np.float32)  # r = 1, 1/3, 2/3, 0: every one on a level
    assert q.variance(x) == pytest.approx(0.0, abs=1e-12)
    codes = q.quantize(x, np.random.default_rng(0))
    np.testing.assert_allclose(q.dequantize(codes), x, rtol=1e-6)


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("count", [1, BUCKET - 1, BUCKET, 5 * BUCKET + 3])
def test_compress_round_trips_the_codes_bit_for_bit(name: str, count: int) -> None:
    q = SCHEMES[name]()
    x = gradient_like(count, seed=count).reshape(-1, 1) if count > 1 else gradient_like(1, 0)
    payload, ctx = q.compress(x, np.random.default_rng(7))
    assert payload.dtype == np.uint8 and payload.size == q.payload_bytes(count)
    expected = q.dequantize(q.quantize(x, np.random.default_rng(7))).reshape(x.shape)
    got = q.decompress(payload, ctx)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(got, expected)


def test_payload_is_bits_per_coordinate_plus_levels_and_norms() -> None:
    q = Q.nuqsgd(BITS, 1024)
    count = 1 << 20
    # 3 bits a coordinate, one float32 norm per 1024 coordinates, four float32 levels.
    assert q.payload_bytes(count) == count * 3 // 8 + 4 * (count // 1024) + 16
    assert 4 * count / q.payload_bytes(count) == pytest.approx(10.6, abs=0.05)


def test_a_bucket_with_a_non_finite_value_decodes_as_nan_and_the_others_do_not() -> None:
    q = Q.nuqsgd(BITS, 4)
    x = np.array([1, 2, 3, 4, np.inf, 1, 1, 1, 5, 6, 7, 8], np.float32)
    out = q.decompress(*q.compress(x, np.random.default_rng(0)))
    assert np.all(np.isnan(out[4:8]))
    assert np.all(np.isfinite(out[:4])) and np.all(np.isfinite(out[8:]))


def test_decompress_refuses_a_payload_of_the_wrong_size() -> None:
    q = Q.nuqsgd(BITS, BUCKET)
    payload, ctx = q.compress(np.ones(100, np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected"):
        q.decompress(payload[:-1], ctx)


@pytest.mark.parametrize(
    "levels, why",
    [([0, 0.5, 1], "need 4"), ([0, 0.6, 0.5, 1], "rise strictly"), ([0.1, 0.2, 0.5, 1], "rise strictly"),
     ([0, 0.2, 0.5, np.nan], "rise strictly")],
)  # fmt: skip
def test_bad_levels_are_refused(levels: list[float], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Q.StochasticQuantizer("x", BITS, BUCKET, levels)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="bits"):
        Q.nuqsgd(9, BUCKET)
    with pytest.raises(ValueError, match="bucket size"):
        Q.nuqsgd(BITS, 0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Q.amq(BITS, BUCKET, 1.0)


# --- adaptive levels ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples() -> list[np.ndarray]:
    return [gradient_like(40 * BUCKET, seed=10 + i) for i in range(3)]


def test_mixture_variance_matches_the_quantizer_on_normal_buckets() -> None:
    # On buckets whose normalized magnitudes are close to a truncated normal, the model predicts the variance.
    rng = np.random.default_rng(11)
    grads = [rng.normal(0.0, 1.0, 200 * BUCKET) for _ in range(2)]
    mixture = A.Mixture.from_gradients(grads, BUCKET)
    levels = Q.exponential_levels(BITS)
    actual = np.mean([Q.nuqsgd(BITS, BUCKET).normalized_variance(g) for g in grads])
    assert mixture.expected_variance(levels) == pytest.approx(actual, rel=0.15)


def test_alq_lowers_the_estimated_variance_and_balances_each_level(samples: list[np.ndarray]) -> None:
    mixture = A.Mixture.from_gradients(samples, BUCKET)
    levels = A.fit_alq(mixture, BITS)
    Q.check_levels(levels, BITS)
    fitted = mixture.expected_variance(levels)
    for start in (Q.exponential_levels(BITS), Q.uniform_levels(BITS)):
        assert fitted < mixture.expected_variance(start)
    # A local minimum: moving any inner level either way raises V.
    for j in range(1, levels.size - 1):
        for step in (-1e-3, 1e-3):
            moved = levels.copy()
            moved[j] += step
            assert mixture.expected_variance(moved) >= fitted - 1e-12


def test_amq_lowers_the_estimated_variance(samples: list[np.ndarray]) -> None:
    mixture = A.Mixture.from_gradients(samples, BUCKET)
    p = A.fit_amq(mixture, BITS, p=0.5)
    assert 0 < p < 1
    best = mixture.expected_variance(Q.power_levels(BITS, p))
    assert best < mixture.expected_variance(Q.power_levels(BITS, 0.5))
    for other in (0.9 * p, min(0.999, 1.1 * p)):
        assert best <= mixture.expected_variance(Q.power_levels(BITS, other)) + 1e-9


def test_fitted_levels_lower_the_real_variance_of_fresh_gradients(samples: list[np.ndarray]) -> None:
    fresh = gradient_like(40 * BUCKET, seed=99)
    alq = A.refit(Q.alq(BITS, BUCKET), samples)
    amq = A.refit(Q.amq(BITS, BUCKET), samples)
    # Against the fixed level sets under the same (L-infinity) norm: uniform (QSGDinf) and exponential.
    for fixed in (Q.uniform_levels(BITS), Q.exponential_levels(BITS)):
        baseline = Q.StochasticQuantizer("fixed", BITS, BUCKET, fixed, Q.Norm.LINF).normalized_variance(fresh)
        assert alq.normalized_variance(fresh) < baseline
        assert amq.normalized_variance(fresh) < baseline


def test_refit_leaves_fixed_schemes_alone_and_refuses_empty_input(samples: list[np.ndarray]) -> None:
    q = Q.qsgdinf(BITS, BUCKET)
    assert A.refit(q, samples) is q
    with pytest.raises(ValueError, match="cannot fit"):
        A.Mixture.from_gradients([np.zeros(10)], BUCKET)


def test_schedule_refits_early_then_periodically() -> None:
    s = A.LevelSchedule(early=(0, 10), every=100)
    assert [t for t in range(0, 301) if s.due(t)] == [0, 10, 100, 200, 300]
