"""The compiled float path gives the numpy reference's bits, for every kernel set this CPU runs.

Compared bit for bit (float results by their IEEE bits, so NaN payloads and signed zeros count): block exponents,
quantize into int32 lanes (native or big-endian, rows at any stride and alignment, as in packet buffers) and
dequantize from them, over special values, odd shapes, exponents the shift of which needs two factors, outputs
large enough to be streamed, and arbitrary bit patterns.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netagg.host_agent import _native
from netagg.host_agent import quantize as q
from netagg.wire import AGG_OFFSET, HEADER_BYTES, LANE_DTYPE

pytestmark = pytest.mark.unit

F32 = np.float32
_TINY = float(np.finfo(F32).smallest_subnormal)
_NORMAL = float(np.finfo(F32).tiny)
_MAX = float(np.finfo(F32).max)
_BELOW_2_127 = float(np.nextafter(F32(2.0**127), F32(0)))
#: Every kind of float32 the exponent and rounding rules treat specially.
SPECIALS = np.array(
    [0.0, -0.0, _TINY, -_TINY, 3 * _TINY, _NORMAL - _TINY, 2.0**-127, 2.0**-126, _NORMAL, -_NORMAL]  # denormals
    + [0.5, -0.5, 1.0, -1.0, 1.5, 2.5, -2.5, 3.5, 1 - 2.0**-24, 2.0**23 + 1]  # ties, last bits
    + [2.0**30, 2.0**31, -(2.0**31), 2.0**126, _BELOW_2_127, 2.0**127, -(2.0**127), _MAX, -_MAX]  # large
    + [np.inf, -np.inf, np.nan],
    dtype=F32,
)
#: NaNs the arithmetic above cannot make: negative, signalling, with a payload.
ODD_NANS = np.array([0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FC12345], np.uint32).view(F32)
WORKERS = [1, 2, 3, 8, 32, 1000, 2**20]


@pytest.fixture(params=_native.available_kernels())
def kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each kernel set this CPU has (AVX2, SSE2, portable C)."""
    before = _native.active_kernels()
    _native.select_kernels(request.param)
    yield request.param
    _native.select_kernels(before)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint32)


def assert_same_exponents(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    exps, nonfinite = q.block_exponents(blocks)
    ref_exps, ref_nonfinite = q.block_exponents_reference(blocks)
    np.testing.assert_array_equal(exps, ref_exps)
    np.testing.assert_array_equal(nonfinite, ref_nonfinite)
    assert exps.dtype == np.int8 and nonfinite.dtype == bool
    return exps, nonfinite


def assert_same_round_trip(blocks: np.ndarray, shared: np.ndarray, n: int, own=None, nonfinite=None) -> np.ndarray:
    """Quantize and dequantize with both implementations; returns the lanes."""
    with np.errstate(all="ignore"):  # the reference warns about lanes a wrong `own` lets overflow
        lanes = q.quantize(blocks, shared, n, own=own)
        ref = q.quantize_reference(blocks, shared, n, own=own)
        np.testing.assert_array_equal(lanes, ref)
        back = q.dequantize(lanes, shared, n, nonfinite)
        ref_back = q.dequantize_reference(ref, shared, n, nonfinite)
    np.testing.assert_array_equal(_bits(back), _bits(ref_back))
    return lanes


def _all_pairs(values: np.ndarray, lanes: int) -> np.ndarray:
    """Blocks holding every ordered pair of ``values`` (a block's largest magnitude decides its exponent)."""
    a, b = np.meshgrid(values, values, indexing="ij")
    blocks = np.zeros((a.size, lanes), F32)
    blocks[:, 0], blocks[:, lanes - 1] = a.ravel(), b.ravel()
    with np.errstate(invalid="ignore"):  # signalling NaNs
        blocks[:, 1 : lanes - 1] = a.ravel()[:, None] * F32(0.375)
    return blocks


@pytest.mark.parametrize("n", WORKERS)
def test_special_values(kernels: str, n: int) -> None:
    values = np.concatenate([SPECIALS, ODD_NANS])
    blocks = _all_pairs(values, 19)
    exps, nonfinite = assert_same_exponents(blocks)
    assert_same_round_trip(blocks, exps, n, nonfinite=nonfinite)
    # Shared exponents above the block's own (another worker's larger values), up to the int8 limit.
    raised = np.minimum(exps.astype(np.int16) + np.arange(len(exps)) % 40, 127)
    assert_same_round_trip(blocks, raised, n, nonfinite=nonfinite)


def test_every_exponent_and_rounding_tie(kernels: str) -> None:
    """Each exponent from the smallest denormal to 2**127, with values whose scaled form ends in .5 (ties)."""
    e = np.arange(-149, 129)
    with np.errstate(over="ignore"):
        top = np.ldexp(1.0, e).astype(F32)  # 2**128 becomes inf
    below = np.nextafter(top, F32(0))
    ties = (np.ldexp(1.0, e - 24) * np.array([[1], [3], [5], [-7]])).astype(F32).T
    blocks = np.column_stack([top, below, -below, ties])
    exps, nonfinite = assert_same_exponents(blocks)
    for n in WORKERS:
        assert_same_round_trip(blocks, exps, n, nonfinite=nonfinite)


@pytest.mark.parametrize("lanes", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 255, 257])
@pytest.mark.parametrize("rows", [0, 1, 5])
def test_odd_shapes(kernels: str, lanes: int, rows: int) -> None:
    rng = np.random.default_rng(lanes * 10 + rows)
    blocks = (rng.standard_normal((rows, lanes)) * np.ldexp(1.0, rng.integers(-140, 120, (rows, 1)))).astype(F32)
    exps, nonfinite = assert_same_exponents(blocks)
    assert_same_round_trip(blocks, exps, 8, nonfinite=nonfinite)


def _random_bits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(F32)


@pytest.mark.parametrize("n", WORKERS)
def test_wrong_own_exponents_and_out_of_range_shared(kernels: str, n: int) -> None:
    """Caller errors give the reference's bits too: exponents that understate the values (lanes out of int32
    range: INT32_MIN), shared exponents beyond int8 (scale factors of 0, denormal or inf)."""
    rng = np.random.default_rng(n)
    blocks = _random_bits(rng, (64, 24))
    lying = (np.full(64, -128, np.int8), np.zeros(64, bool))
    for shared in (
        rng.integers(-128, 128, 64).astype(np.int8),
        rng.integers(-400, 400, 64).astype(np.int16),
        rng.integers(-(2**31), 2**31, 64).astype(np.int64),
    ):
        lanes = assert_same_round_trip(blocks, shared, n, own=lying)
        sums = _random_bits(rng, lanes.shape).view(np.int32)
        flags = rng.random(64) < 0.25
        with np.errstate(all="ignore"):
            back = q.dequantize(sums, shared, n, flags)
            ref = q.dequantize_reference(sums, shared, n, flags)
        np.testing.assert_array_equal(_bits(back), _bits(ref))


@pytest.mark.parametrize("lanes", [32, 37, 256])
@pytest.mark.parametrize("offset", [0, 1, 2, AGG_OFFSET + HEADER_BYTES])
def test_strided_big_endian_lanes_in_packet_buffers(kernels: str, lanes: int, offset: int) -> None:
    """quantize writes each block's lanes big-endian into its frame, after the header bytes, and touches nothing
    else; dequantize reads them back from there. Unaligned offsets included."""
    rng = np.random.default_rng(lanes + offset)
    m = 9
    blocks = (rng.standard_normal((m, lanes)) * 1e3).astype(F32)
    blocks[4, 3] = np.inf
    exps, nonfinite = q.block_exponents(blocks)
    shared = exps.astype(np.int16) + 1
    stride = offset + HEADER_BYTES + 4 * lanes + 3  # odd: every row at another alignment
    frames = bytearray(b"\xa5" * (m * stride + offset))
    wire = q.lane_view(frames, m, lanes, offset=offset, stride=stride)
    assert wire.dtype == LANE_DTYPE and not wire.flags.c_contiguous
    assert q.quantize(blocks, shared, 4, out=wire, own=(exps, nonfinite)) is wire
    expected = q.quantize_reference(blocks, shared, 4, own=(exps, nonfinite))
    for i in range(m):
        start = offset + i * stride
        assert frames[start : start + 4 * lanes] == expected[i].astype(">i4").tobytes()
        gap_end = start + stride if i + 1 < m else len(frames)
        assert frames[start + 4 * lanes : gap_end] == b"\xa5" * (gap_end - start - 4 * lanes)
    assert frames[:offset] == b"\xa5" * offset
    out = np.full((m, lanes), 7.0, F32)
    assert q.dequantize(wire, shared, 4, nonfinite, out=out) is out
    np.testing.assert_array_equal(_bits(out), _bits(q.dequantize_reference(expected, shared, 4, nonfinite)))


@pytest.mark.parametrize("dtype", ["<i4", ">i4"])
def test_lanes_in_either_byte_order_and_strided_rows(kernels: str, dtype: str) -> None:
    rng = np.random.default_rng(5)
    blocks = (rng.standard_normal((12, 64)) * 50).astype(F32)
    exps, nonfinite = q.block_exponents(blocks)
    expected = q.quantize_reference(blocks, exps, 2)
    wide = np.zeros((24, 80), dtype)
    rows = wide[::2, 8:72]  # rows 640 bytes apart, lanes adjacent
    q.quantize(blocks, exps, 2, out=rows)
    np.testing.assert_array_equal(rows, expected)
    assert not wide[1::2].any() and not wide[:, :8].any() and not wide[:, 72:].any()
    src = np.zeros((12, 100), F32)[:, 10:74]
    src[...] = blocks
    np.testing.assert_array_equal(q.quantize(src, exps, 2), expected)  # strided source rows
    back = np.zeros((12, 90), F32)[:, 5:69]
    q.dequantize(rows, exps, 2, nonfinite, out=back)
    np.testing.assert_array_equal(_bits(back), _bits(q.dequantize_reference(expected, exps, 2, nonfinite)))


@pytest.mark.parametrize("misalign", [0, 1, 2, 3])
def test_large_outputs_are_streamed_with_the_same_bits(kernels: str, misalign: int) -> None:
    """Outputs of 4 MiB and more take the non-temporal stores; rows at every alignment."""
    rng = np.random.default_rng(misalign)
    lanes = 253
    m = (4 << 20) // (4 * lanes) + 2
    blocks = (rng.standard_normal((m, lanes)) * np.ldexp(1.0, rng.integers(-130, 100, (m, 1)))).astype(F32)
    blocks[7, :] = 0
    blocks[8, 100] = np.nan
    exps, nonfinite = q.block_exponents(blocks)
    expected = q.quantize_reference(blocks, exps, 8, own=(exps, nonfinite))
    out = np.frombuffer(bytearray(blocks.nbytes + 4), np.uint8)[misalign : misalign + blocks.nbytes]
    lanes_out = out.view(">i4").reshape(m, lanes)
    q.quantize(blocks, exps, 8, out=lanes_out, own=(exps, nonfinite))
    np.testing.assert_array_equal(lanes_out, expected)
    back = np.frombuffer(bytearray(blocks.nbytes + 4), np.uint8)[misalign : misalign + blocks.nbytes]
    back = back.view(F32).reshape(m, lanes)
    q.dequantize(lanes_out, exps, 8, nonfinite, out=back)
    np.testing.assert_array_equal(_bits(back), _bits(q.dequantize_reference(expected, exps, 8, nonfinite)))


@given(
    bits=hnp.arrays(np.uint32, st.tuples(st.integers(0, 6), st.integers(0, 40))),
    n=st.integers(1, 2**20),
    raise_by=st.integers(0, 60),
    kernel_set=st.sampled_from(_native.available_kernels()),
)
@settings(max_examples=300, deadline=None)
def test_property_arbitrary_bit_patterns(bits: np.ndarray, n: int, raise_by: int, kernel_set: str) -> None:
    before = _native.active_kernels()
    _native.select_kernels(kernel_set)
    try:
        blocks = bits.view(F32)
        exps, nonfinite = assert_same_exponents(blocks)
        shared = np.minimum(exps.astype(np.int16) + raise_by, 127)
        assert_same_round_trip(blocks, shared, n, nonfinite=nonfinite)
    finally:
        _native.select_kernels(before)


def test_data_path_calls_use_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The argument types the agent passes (staging, transport, operation) never fall back to numpy."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fell back to the numpy reference")

    rng = np.random.default_rng(3)
    blocks = rng.standard_normal((40, 64)).astype(F32)
    ref_exps, ref_nonfinite = q.block_exponents_reference(blocks)
    expected = q.quantize_reference(blocks, ref_exps, 4)
    for name in ("block_exponents_reference", "quantize_reference", "dequantize_reference"):
        monkeypatch.setattr(q, name, refuse)
    exps, nonfinite = q.block_exponents(blocks)  # staging: whole staged tensor
    rows = np.array([3, 1, 4, 15, 9, 26], np.intp)
    shared = np.fromiter((int(e) for e in exps[rows]), dtype=np.int16, count=len(rows))  # transport
    lanes = q.quantize(blocks[rows], shared, 4, own=(exps[rows], nonfinite[rows]))
    np.testing.assert_array_equal(lanes, expected[rows])
    sum_bytes = bytearray(expected.astype(LANE_DTYPE).tobytes())  # operation: RESULT payloads as received
    sums = np.frombuffer(sum_bytes, dtype=LANE_DTYPE).reshape(expected.shape)
    out = np.empty_like(blocks)
    q.dequantize(sums, exps.copy(), 4, np.zeros(len(blocks), bool), out=out)
    q.dequantize(sums, exps, 4, None, out=out)


@pytest.mark.parametrize(
    "case",
    ["lanes not adjacent", "float64 out", "int64 sums", "big-endian float out", "out overlaps", "flags as ints"],
)
def test_arguments_the_kernels_do_not_take_go_to_the_reference(case: str) -> None:
    rng = np.random.default_rng(9)
    blocks = rng.standard_normal((6, 10)).astype(F32)
    exps, nonfinite = q.block_exponents_reference(blocks)
    lanes = q.quantize_reference(blocks, exps, 2)
    if case == "lanes not adjacent":
        t = np.ascontiguousarray(blocks.T).T
        np.testing.assert_array_equal(q.block_exponents(t)[0], exps)
        np.testing.assert_array_equal(q.quantize(t, exps, 2), lanes)
    elif case == "float64 out":
        out = np.empty(blocks.shape, np.float64)
        q.dequantize(lanes, exps, 2, out=out)
        np.testing.assert_array_equal(out, q.dequantize_reference(lanes, exps, 2, out=np.empty_like(out)))
    elif case == "int64 sums":
        wide = lanes.astype(np.int64) * 3
        np.testing.assert_array_equal(q.dequantize(wide, exps, 2), q.dequantize_reference(wide, exps, 2))
    elif case == "big-endian float out":
        out = np.empty(blocks.shape, ">f4")
        q.dequantize(lanes, exps, 2, out=out)
        np.testing.assert_array_equal(out, q.dequantize_reference(lanes, exps, 2))
    elif case == "out overlaps":
        inplace = lanes.copy()
        q.dequantize(inplace, exps, 2, out=inplace.view(F32))
        np.testing.assert_array_equal(_bits(inplace.view(F32)), _bits(q.dequantize_reference(lanes, exps, 2)))
    else:
        flags = nonfinite.astype(np.uint8)
        flags[2] = 7
        np.testing.assert_array_equal(
            _bits(q.dequantize(lanes, exps, 2, flags)), _bits(q.dequantize_reference(lanes, exps, 2, flags))
        )


@pytest.mark.parametrize("lanes", [1, 7, 8, 13, 256])
def test_requantize_matches_the_reference(kernels: str, lanes: int) -> None:
    """Every shift 0..40 (above 30: zeros), own above shared (zeros), ties and the extreme pre-lanes, into
    big-endian lanes at a packet's row stride, for lane counts that leave a scalar tail."""
    rng = np.random.default_rng(lanes)
    rows = 41 * 3
    pre = rng.integers(-(2**31) + 1, 2**31, size=(rows, lanes), dtype=np.int64).astype(np.int32)
    pre[::5] = (rng.integers(-(2**20), 2**20, size=(len(pre[::5]), lanes)) << rng.integers(0, 10)).astype(np.int32)
    pre[1, :] = 2**31 - 1
    pre[2, :] = -(2**31) + 1
    pre[3, :] = 0
    own = rng.integers(-128, 100, size=rows).astype(np.int8)
    shared = np.clip(own.astype(np.int64) + np.repeat(np.arange(41), 3), -128, 127).astype(np.int8)
    shared[4] = own[4] - 1 if own[4] > -128 else own[4]  # own above shared: zeros
    expected = q.requantize_reference(pre, own, shared)
    frames = np.zeros(rows * (lanes * 4 + 18), np.uint8)
    out = q.lane_view(frames, rows, lanes, offset=18, stride=lanes * 4 + 18)
    _native.requantize(pre, own, shared, out)  # the kernel itself (q.requantize would fall back quietly)
    np.testing.assert_array_equal(out, expected)
    native = np.empty_like(pre)
    _native.requantize(pre, own, shared, native)
    np.testing.assert_array_equal(native, expected)
    np.testing.assert_array_equal(q.requantize(pre, own, shared), expected)


def test_native_module_checks_its_arguments() -> None:
    blocks = np.zeros((4, 8), F32)
    exps, flags, lanes = np.zeros(4, np.int8), np.zeros(4, bool), np.zeros((4, 8), np.int32)
    bad_calls = [
        lambda: _native.block_exponents(blocks[0], exps, flags),  # 1-D
        lambda: _native.block_exponents(blocks, exps[:3], flags),  # length
        lambda: _native.block_exponents(blocks, exps.astype(np.int32), flags),  # exps must be int8
        lambda: _native.quantize(blocks, exps, 27, exps, flags, lanes.astype(np.int64)),
        lambda: _native.quantize(blocks, exps, 27, exps, flags, lanes[:, :4]),  # shape
        lambda: _native.quantize(blocks, exps, 27, exps, flags, blocks.view(np.int32)),  # overlap
        lambda: _native.quantize(blocks, exps.astype(np.uint8), 27, exps, flags, lanes),
        lambda: _native.quantize(blocks, exps, 2**40, exps, flags, lanes),
        lambda: _native.dequantize(lanes, exps, 27, None, np.zeros((4, 8), F32)[:, ::2]),  # shape
        lambda: _native.dequantize(lanes, exps, 27, None, bytes(128)),  # read-only
        lambda: _native.dequantize([[1]], exps, 27, None, blocks),
        lambda: _native.copy(bytearray(3), b"four"),
    ]
    for call in bad_calls:
        with pytest.raises(_native.Unsupported):
            call()
    assert issubclass(_native.Unsupported, ValueError)
    with pytest.raises(ValueError, match="not available"):
        _native.select_kernels("avx9000")
    assert _native.active_kernels() in _native.available_kernels()
    assert _native.available_kernels()[-1] == "generic"


def test_large_calls_run_in_threads_at_once() -> None:
    """Calls over 1 MiB release the GIL: several threads dequantize side by side, each getting its own bits."""
    rng = np.random.default_rng(11)
    blocks = rng.standard_normal((2048, 256)).astype(F32)
    exps, nonfinite = q.block_exponents(blocks)
    lanes = q.quantize(blocks, exps, 4)
    expected = _bits(q.dequantize_reference(lanes, exps, 4))
    results: list[np.ndarray] = []

    def work() -> None:
        for _ in range(3):
            results.append(_bits(q.dequantize(lanes, exps, 4)))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 9
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_missing_extension_names_the_fix() -> None:
    code = (
        "import sys; sys.modules['netagg.host_agent._native'] = None\n"
        "try:\n    import netagg.host_agent.quantize\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "run `make install`" in out and "netagg.host_agent._native" in out
