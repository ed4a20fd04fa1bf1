"""The torch twin of the quantizer (netagg.host_agent.torch_quantize) gives the numpy reference's bits, per device.

The twin uses device-generic torch ops only: on CPU tensors (everywhere) the cases check its arithmetic; on CUDA
tensors they check the GPU computes the same bits, and are skipped, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")

from quantize_cases import (  # noqa: E402
    assert_int32_lanes_match,
    assert_prescale_matches,
    assert_twin_matches_reference,
)

from netagg.host_agent import torch_quantize as tq  # noqa: E402
from netagg.host_agent.quantize import QuantizationError  # noqa: E402

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is false"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_float_path_is_bit_identical_to_the_numpy_reference(device: str) -> None:
    assert assert_twin_matches_reference(device) == 15


@pytest.mark.parametrize("device", DEVICES)
def test_int32_lane_split_and_join_match_the_staging_reference(device: str) -> None:
    assert_int32_lanes_match(device)


@pytest.mark.parametrize("device", DEVICES)
def test_prescaling_then_requantizing_gives_the_lanes_of_quantizing(device: str) -> None:
    assert assert_prescale_matches(device) == 12


def test_bad_input_is_refused_with_the_shape_named() -> None:
    with pytest.raises(QuantizationError, match="float32 tensor shaped"):
        tq.block_exponents(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(QuantizationError, match=r"\(3,\) exponents for 2 blocks"):
        tq.quantize(torch.zeros(2, 8), torch.zeros(3, dtype=torch.int8), 2)
    zeros = torch.zeros(2, dtype=torch.int8)
    with pytest.raises(QuantizationError, match="two workers or more"):
        tq.prescale(torch.zeros(2, 8), zeros, zeros.bool(), 1)
