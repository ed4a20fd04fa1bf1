"""Block floating point quantizer: no int32 overflow of the n-way sum, error within the documented bound.

Every property is checked on both implementations of the float path: the compiled kernels (what callers get) and
the numpy reference. tests/unit/test_native_quantize.py checks that the two give the same bits.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netagg.host_agent import quantize as q
from netagg.wire import EXP_MIN

pytestmark = pytest.mark.unit

LANES = 64
_BIG = float(np.float32(1e30))
F32_MAX_FINITE_OK = np.float32(np.nextafter(np.float32(2.0**127), np.float32(0)))  # largest value with e <= 127

KERNELS = SimpleNamespace(block_exponents=q.block_exponents, quantize=q.quantize, dequantize=q.dequantize)
REFERENCE = SimpleNamespace(
    block_exponents=q.block_exponents_reference, quantize=q.quantize_reference, dequantize=q.dequantize_reference
)
#: Parametrize a test over both implementations of the float path.
both = pytest.mark.parametrize("impl", [KERNELS, REFERENCE], ids=["kernels", "reference"])


def _dist(name: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if name == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if name == "heavy_tailed":  # Cauchy: a few huge values next to many small ones in the same block
        return rng.standard_cauchy(shape).astype(np.float32) * np.float32(1e3)
    if name == "all_zero":
        return np.zeros(shape, np.float32)
    if name == "denormal":
        return (rng.standard_normal(shape) * 1e-40).astype(np.float32)
    if name == "near_max":
        return (rng.uniform(-1, 1, shape) * float(F32_MAX_FINITE_OK)).astype(np.float32)
    if name == "mixed_scales":  # every block at a different scale, tiny to huge
        scales = np.ldexp(1.0, rng.integers(-140, 120, size=(shape[0], 1)))
        return (rng.standard_normal(shape) * scales).astype(np.float32)
    raise AssertionError(name)


def _allreduce(
    workers: list[np.ndarray], n: int, impl: SimpleNamespace = KERNELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate the switch: shared exponent = max, int64 sum (to detect wrap), dequantize the int32 result."""
    exps, flags = zip(*(impl.block_exponents(w) for w in workers))
    shared = np.max(np.stack(exps), axis=0)
    nonfinite = np.any(np.stack(flags), axis=0)
    lanes = [impl.quantize(w, shared, n) for w in workers]
    wide = np.sum(np.stack(lanes).astype(np.int64), axis=0)
    return wide, shared, nonfinite, impl.dequantize(wide.astype(np.int32), shared, n, nonfinite)


@both
@pytest.mark.parametrize("dist", ["normal", "heavy_tailed", "all_zero", "denormal", "near_max", "mixed_scales"])
@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_sum_never_wraps_and_error_within_bound(dist: str, n: int, impl: SimpleNamespace) -> None:
    rng = np.random.default_rng(n * 1000 + len(dist))
    workers = [_dist(dist, rng, (16, LANES)) for _ in range(n)]
    wide, shared, nonfinite, result = _allreduce(workers, n, impl)
    assert np.all(np.abs(wide) <= 2**30), "n-way int32 sum exceeded the guaranteed bound"
    assert not nonfinite.any()
    exact = np.sum(np.stack(workers).astype(np.float64), axis=0)
    err = np.abs(result.astype(np.float64) - exact)
    finite = np.isfinite(result)
    # A true sum beyond float32's range is inf, as float32 arithmetic would give; everything else obeys the bound.
    assert np.all(finite | (np.abs(exact) > np.finfo(np.float32).max))
    bound = q.error_bound(exact, shared, n)
    assert np.all(err[finite] <= bound[finite]), float(np.max(err[finite] - bound[finite]))


@both
def test_exponent_definition(impl: SimpleNamespace) -> None:
    blocks = np.array(
        [[0.0, 0.0], [1.0, -0.5], [0.75, 0.0], [-2.0, 1.0], [1e-45, 0.0], [3.0e38, 0.0], [F32_MAX_FINITE_OK, 0]],
        dtype=np.float32,
    )
    exps, nonfinite = impl.block_exponents(blocks)
    # smallest e with max|x| < 2**e: 1.0 -> 1, 0.75 -> 0, 2.0 -> 2; zero -> EXP_MIN; denormal clamps to EXP_MIN.
    assert exps.tolist()[:5] == [EXP_MIN, 1, 0, 2, EXP_MIN]
    assert exps[6] == 127 and not nonfinite[6]
    assert nonfinite.tolist() == [False, False, False, False, False, True, False]


@both
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("n", [1, 4])
def test_nonfinite_block_comes_back_nan_on_every_worker(bad: float, n: int, impl: SimpleNamespace) -> None:
    rng = np.random.default_rng(1)
    workers = [rng.standard_normal((3, LANES)).astype(np.float32) for _ in range(n)]
    workers[-1][1, 5] = bad
    wide, _, nonfinite, result = _allreduce(workers, n, impl)
    assert nonfinite.tolist() == [False, True, False]
    assert np.all(np.isnan(result[1])) and np.all(np.isfinite(result[[0, 2]]))
    assert np.all(np.abs(wide) <= 2**30)


@both
def test_quantize_zeroes_a_block_its_exponent_does_not_cover(impl: SimpleNamespace) -> None:
    blocks = np.array([[4.0, 1.0]], np.float32)
    assert impl.quantize(blocks, np.array([0]), 2).tolist() == [[0, 0]]


@both
@given(
    hnp.arrays(np.float32, (4, 32), elements=st.floats(-_BIG, _BIG, width=32)),
    hnp.arrays(np.float32, (4, 32), elements=st.floats(-_BIG, _BIG, width=32)),
)
@settings(max_examples=200, deadline=None)
def test_property_two_workers(impl: SimpleNamespace, a: np.ndarray, b: np.ndarray) -> None:
    wide, shared, _, result = _allreduce([a, b], 2, impl)
    assert np.all(np.abs(wide) <= 2**30)
    exact = a.astype(np.float64) + b.astype(np.float64)
    assert np.all(np.abs(result - exact) <= q.error_bound(exact, shared, 2))


@given(
    hnp.arrays(np.uint32, (3, 16), elements=st.integers(0, 2**32 - 1)),
    st.sampled_from([2, 3, 4, 7, 32]),
    st.lists(st.integers(0, 70), min_size=3, max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_requantized_pre_lanes_are_the_lanes_of_quantizing(raw: np.ndarray, n: int, gaps: list[int]) -> None:
    """Any float32 bit pattern (denormals, ties, inf, NaN), any shared exponent at or above the block's own."""
    blocks = raw.view(np.float32)
    own, nonfinite = q.block_exponents_reference(blocks)
    shared = np.minimum(own.astype(np.int64) + gaps, 127).astype(np.int8)
    pre = q.prescale_reference(blocks, own, nonfinite, n)
    expected = q.quantize_reference(blocks, shared, n, own=(own, nonfinite))
    np.testing.assert_array_equal(q.requantize_reference(pre, own, shared), expected)


def test_pre_lanes_round_half_to_even_at_every_shift() -> None:
    """Values exactly halfway between two lanes of the shared exponent, of both signs, and just off halfway."""
    n = 2  # scale 2**(29 - E)
    exps = np.array([0], np.int8)  # 0.75 below keeps the block's own exponent at 0
    for d in range(0, 31):
        step = 2.0 ** (d - 29)  # one lane at the shared exponent d, in value
        halves = (np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * step).astype(np.float32)
        off = np.nextafter(halves, np.float32(np.inf))
        values = np.concatenate([halves, off])
        blocks = np.concatenate([values[np.abs(values) < 0.75], [np.float32(0.75)]]).astype(np.float32)[None, :]
        pre = q.prescale_reference(blocks, exps, np.zeros(1, bool), n)
        shared = np.array([d], np.int8)
        expected = q.quantize_reference(blocks, shared, n)
        np.testing.assert_array_equal(q.requantize_reference(pre, exps, shared), expected, err_msg=f"d={d}")


def test_pre_lanes_need_two_workers() -> None:
    with pytest.raises(q.QuantizationError, match="two workers or more"):
        q.prescale_reference(np.zeros((1, 4), np.float32), np.zeros(1, np.int8), np.zeros(1, bool), 1)


@both
def test_torch_twin_is_bit_identical(impl: SimpleNamespace) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    blocks = np.concatenate([_dist(d, rng, (8, LANES)) for d in ("normal", "denormal", "near_max", "mixed_scales")])
    exps, nonfinite = impl.block_exponents(blocks)
    for n in (1, 3, 32):
        ours = impl.quantize(blocks, exps, n)
        theirs = q.torch_quantize(torch.from_numpy(blocks.copy()), exps, n).numpy()
        np.testing.assert_array_equal(ours, theirs)
        back = impl.dequantize(ours, exps, n, nonfinite)
        back_t = q.torch_dequantize(torch.from_numpy(ours.copy()), exps, n, nonfinite).numpy()
        np.testing.assert_array_equal(back.view(np.uint32), back_t.view(np.uint32))


@pytest.mark.parametrize("n", [1, 2, 32])
def test_int32_exact_guard(n: int) -> None:
    limit = (2**31 - 1) // n
    q.check_int32_exact(np.array([limit, -limit], np.int32), n)
    if n == 1:  # one worker's values are the sum: nothing can wrap
        q.check_int32_exact(np.array([-(2**31), 2**31 - 1], np.int32), n)
        return
    with pytest.raises(q.QuantizationError, match=f"over {n} workers could wrap"):
        q.check_int32_exact(np.array([0, limit + 1], np.int32), n)
    with pytest.raises(q.QuantizationError, match="could wrap"):
        q.check_int32_exact(np.array([-limit - 1], np.int32), n)


@both
def test_bad_inputs_raise_clearly(impl: SimpleNamespace) -> None:
    with pytest.raises(q.QuantizationError, match="float32 array shaped"):
        impl.block_exponents(np.zeros((2, 3), np.float64))
    with pytest.raises(q.QuantizationError, match="exponents for 2 blocks"):
        impl.quantize(np.zeros((2, 3), np.float32), np.zeros(3, np.int8), 2)
    with pytest.raises(q.QuantizationError, match="sums must be 2-D"):
        impl.dequantize(np.zeros(3, np.int32), np.zeros(3, np.int8), 2)
    with pytest.raises(q.QuantizationError, match="workers must be >= 1"):
        q.headroom_bits(0)
