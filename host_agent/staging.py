"""A caller's tensor as blocks of ``lanes`` values, and the sum back out.

A staged tensor is ``head`` (whole blocks) and ``tail`` (at most one zero-padded partial block). The transport
quantizes each block straight from there into a packet buffer and, when the block's RESULT arrives, writes the sum
into the same rows (a sent block is never read again: a retransmission resends the packet's bytes). So memory
stays at the tensor plus one block:

* in-place float32 arrays that are C-contiguous and writable (numpy arrays, and plain torch CPU tensors that are
  contiguous, strided and carry no lazy conjugate or negation) are not copied at all: ``head`` is the caller's
  memory, viewed as blocks, and only the partial last block lives in ``tail``. The transport thread reads the
  caller's memory while sending and writes sums into it as they arrive (the caller does not touch the tensor
  until the future is done; after a failed all-reduce its contents are unspecified, as with gloo or NCCL).
* everything else (other dtypes, layouts, ``inplace=False``) is copied once into an agent-owned float32 or int32
  buffer (``head``, padded; ``tail`` empty); the result is taken from there when the all-reduce completes. Such
  torch tensors are copied with torch ops (``copy_``) into a torch view of the agent's numpy buffer, so any
  layout or dtype torch supports works.

int32 travels as two lanes per element, the low 16 bits (unsigned) and the high 16 bits (signed), so that an n-way
sum of either lane fits an int32 lane for any values (n <= 32: at most 32 * 65535 < 2**21). The sum is put back
together in int64 and wrapped to int32, which is what int32 addition in torch or gloo gives. Every rank decides the
same way whatever its values, so no rank can refuse a sum the others go on with.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netagg.host_agent import quantize as q
from netagg.host_agent.collective import ENCODING_BFP, ENCODING_INT32X2, dtype_name
from netagg.host_agent.errors import AgentInputError

#: numpy dtypes summed through float32 staging (quantized), and the exact integer path.
_NUMPY_FLOAT = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
_NUMPY_INT = np.dtype(np.int32)


@dataclass(slots=True)
class Staged:
    """One tensor laid out as ``m`` blocks of ``lanes`` values: ``head`` rows, then ``tail`` rows (0 or 1)."""

    exact: bool  # int32: two lanes per element, summed exactly (no scaling, exponent 0)
    head: np.ndarray  # (h, lanes) float32, or int32 lanes (low, high, low, high, ...) when exact
    exps: np.ndarray  # (m,) int8: this worker's block exponents (0 when exact)
    nonfinite: np.ndarray  # (m,) bool
    count: int  # number of real elements
    dtype: str = ""  # the caller's dtype, as every rank names it ('float32' for numpy's and torch's alike)
    #: (m - h, lanes): the zero-padded partial last block when ``head`` is the caller's own memory, else no rows.
    tail: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    #: ``head`` is the caller's array (an in-place float32 all-reduce that needed no copy).
    caller_memory: bool = False
    #: ``head`` holds int32 pre-lanes made on the tensor's device (:class:`Prescaled`), requantized when sent; the
    #: summed lanes land in it as they are and go back to the device to be dequantized there.
    prescaled: bool = False

    @property
    def num_blocks(self) -> int:
        return self.head.shape[0] + self.tail.shape[0]

    @property
    def encoding(self) -> str:
        return ENCODING_INT32X2 if self.exact else ENCODING_BFP

    def parts(self, r0: int, r1: int) -> list[tuple[int, int, np.ndarray]]:
        """Rows ``r0 .. r1 - 1`` as ``(start, stop, rows)`` pieces that are each one array view (head or tail)."""
        h = self.head.shape[0]
        if r1 <= h:
            return [(r0, r1, self.head[r0:r1])]
        if r0 >= h:
            return [(r0, r1, self.tail[r0 - h : r1 - h])]
        return [(r0, h, self.head[r0:]), (h, r1, self.tail[: r1 - h])]

    def block(self, row: int) -> np.ndarray:
        """Row ``row`` (a view)."""
        return self.parts(row, row + 1)[0][2][0]

    def flat(self) -> np.ndarray:
        """The ``count`` values (or summed lanes) in order: a view, or a new array when head and tail are split."""
        if not self.tail.shape[0]:
            return self.head.reshape(-1)
        return np.concatenate((self.head.reshape(-1), self.tail.reshape(-1)))


class Target:
    """Where a finished sum goes: back into the caller's tensor, or a new one."""

    def __init__(self, tensor: Any, inplace: bool) -> None:
        self.tensor = tensor
        self.inplace = inplace

    def deliver(self, flat: np.ndarray) -> Any:
        """Write the flat sum (float32 or int32, ``count`` long) out; return what ``allreduce`` returns."""
        raise NotImplementedError

    def caller_values(self) -> np.ndarray:
        """The caller's values as one flat numpy array sharing their memory (in-place staging only)."""
        raise NotImplementedError

    def deliver_lanes(self, sums: np.ndarray, shared_exps: np.ndarray, nonfinite: np.ndarray) -> Any:
        """Take the summed int32 lanes of a prescaled all-reduce (rows of ``head``, with the shared exponent and
        the RESULT's non-finite flag of each row) to be dequantized where the tensor lives."""
        raise NotImplementedError


@dataclass(slots=True)
class Prescaled:
    """Blocks already quantized on their tensor's device, handed to ``allreduce_async`` instead of a tensor.

    ``lanes`` holds the pre-lanes (``quantize.prescale_reference``: int32 fixed point at each block's own exponent)
    of ``count`` float values of ``dtype``, ``exps`` and ``nonfinite`` the blocks' own exponents and flags. The
    agent announces ``exps``, requantizes each block with integer shifts when its shared exponent arrives, lands
    the summed lanes back in ``lanes`` and calls ``target.deliver_lanes``. int32 tensors come as their lane pairs
    (``exact``; ``exps`` zero), as the agent's own split makes them, and their joined int32 sums go to
    ``target.deliver`` (half the bytes of the lanes).
    """

    lanes: np.ndarray  # (m, L) int32, C-contiguous and writable
    exps: np.ndarray  # (m,) int8
    nonfinite: np.ndarray  # (m,) bool
    count: int
    dtype: str
    target: Target
    exact: bool = False
    #: One piece of a larger collective: the descriptor given with it names the whole (its count is not checked).
    part: bool = False


class _NumpyTarget(Target):
    def caller_values(self) -> np.ndarray:
        return self.tensor.reshape(-1)

    def deliver(self, flat: np.ndarray) -> Any:
        x = self.tensor
        if self.inplace:
            np.copyto(x, flat.reshape(x.shape), casting="same_kind")
            return x
        # ``flat`` is the agent's own staging buffer, no longer used by anyone: hand it over when it already has
        # the dtype (no second copy of the tensor).
        return flat.reshape(x.shape).astype(x.dtype, copy=False)


class _TorchTarget(Target):
    def caller_values(self) -> np.ndarray:
        return self.tensor.detach().numpy().reshape(-1)

    def deliver(self, flat: np.ndarray) -> Any:
        import torch

        x = self.tensor
        src = torch.from_numpy(flat).view(x.shape)
        with torch.no_grad():
            if self.inplace:
                x.copy_(src)
                return x
            return src.to(dtype=x.dtype, copy=True)


def _alloc(count: int, lanes: int, dtype: np.dtype) -> np.ndarray:
    m = -(-count // lanes)
    blocks = np.empty((m, lanes), dtype=dtype)
    if m:
        blocks[-1].fill(0)  # padding of the last block; the rest is overwritten by the copy
    return blocks


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def stage(x: Any, *, lanes: int, inplace: bool) -> tuple[Staged, Target]:
    """Copy ``x`` (numpy array or torch CPU tensor) into fresh block buffers, or take a :class:`Prescaled` as it
    is; raises AgentInputError if unusable."""
    if isinstance(x, Prescaled):
        return _stage_prescaled(x, lanes)
    if _is_torch(x):
        return _stage_torch(x, lanes, inplace)
    if isinstance(x, np.ndarray):
        return _stage_numpy(x, lanes, inplace)
    raise AgentInputError(f"all-reduce takes a numpy array or a torch CPU tensor, got {type(x).__name__}")


def split_int32(values: np.ndarray, lanes: int) -> np.ndarray:
    """int32 values -> (m, lanes) int32 blocks of (low 16 bits unsigned, high 16 bits signed) lane pairs."""
    count = values.size
    blocks = _alloc(2 * count, lanes, np.dtype(np.int32))
    flat = blocks.reshape(-1)
    np.bitwise_and(values, 0xFFFF, out=flat[0 : 2 * count : 2])
    np.right_shift(values, 16, out=flat[1 : 2 * count : 2])  # arithmetic: the high half keeps the sign
    return blocks


def join_int32(lanes: np.ndarray, count: int) -> np.ndarray:
    """Summed lane pairs (any integer dtype, flat) -> the int32 sums, wrapped as int32 addition wraps."""
    low = lanes[0 : 2 * count : 2].astype(np.int64)
    high = lanes[1 : 2 * count : 2].astype(np.int64)
    return (high * 65536 + low).astype(np.int32)  # the int64 -> int32 cast keeps the low 32 bits


def exact_staged(blocks: np.ndarray, count: int, dtype: str) -> Staged:
    m = blocks.shape[0]
    return Staged(True, blocks, np.zeros(m, np.int8), np.zeros(m, bool), count, dtype)


def _float_staged(blocks: np.ndarray, count: int, dtype: str) -> Staged:
    exps, nonfinite = q.block_exponents(blocks)
    return Staged(False, blocks, exps, nonfinite, count, dtype)


def _in_place_staged(x: np.ndarray, lanes: int) -> Staged:
    """A C-contiguous writable float32 array as blocks without a copy: whole blocks are ``x`` itself."""
    flat = x.reshape(-1)
    h = flat.size // lanes
    head = flat[: h * lanes].reshape(h, lanes)
    tail = _alloc(flat.size - h * lanes, lanes, np.dtype(np.float32))
    tail.reshape(-1)[: flat.size - h * lanes] = flat[h * lanes :]
    exps, nonfinite = q.block_exponents(head)
    if tail.shape[0]:
        tail_exps, tail_nonfinite = q.block_exponents(tail)
        exps, nonfinite = np.concatenate((exps, tail_exps)), np.concatenate((nonfinite, tail_nonfinite))
    return Staged(False, head, exps, nonfinite, flat.size, dtype_name(x.dtype), tail, caller_memory=True)


def _stage_prescaled(x: Prescaled, lanes: int) -> tuple[Staged, Target]:
    rows = x.lanes
    m = -(-(2 * x.count if x.exact else x.count) // lanes)
    if rows.dtype != np.int32 or rows.shape != (m, lanes) or not rows.flags.c_contiguous or not rows.flags.writeable:
        raise AgentInputError(
            f"prescaled lanes must be a writable C-contiguous int32 array of shape ({m}, {lanes}) for {x.count} "
            f"{x.dtype} elements, got {rows.dtype} {rows.shape}"
        )
    if x.exps.shape != (m,) or x.nonfinite.shape != (m,):
        raise AgentInputError(f"prescaled lanes of {m} blocks need {m} exponents and non-finite flags")
    staged = Staged(x.exact, rows, x.exps, x.nonfinite, x.count, x.dtype, prescaled=not x.exact)
    return staged, x.target


def finished_values(staged: Staged, target: Target) -> Any:
    """The summed values (landed in ``staged``'s rows) handed to ``target``; returns what ``allreduce`` returns."""
    if staged.caller_memory:  # the sums landed in the caller's array; only the partial last block is ours
        head_values = staged.head.size
        rest = staged.count - head_values
        if rest:
            target.caller_values()[head_values:] = staged.tail.reshape(-1)[:rest]
        return target.tensor
    if staged.exact:
        return target.deliver(join_int32(staged.head.reshape(-1), staged.count))
    return target.deliver(staged.head.reshape(-1)[: staged.count])


def _stage_numpy(x: np.ndarray, lanes: int, inplace: bool) -> tuple[Staged, Target]:
    if x.dtype == _NUMPY_INT:
        exact = True
    elif x.dtype in _NUMPY_FLOAT:
        exact = False
    else:
        raise AgentInputError(
            f"cannot all-reduce numpy dtype {x.dtype}: supported are float32, float16, float64 (summed in "
            "float32 block floating point) and int32 (exact)"
        )
    if inplace and not x.flags.writeable:
        raise AgentInputError("in-place all-reduce of a read-only numpy array (pass inplace=False)")
    dtype = dtype_name(x.dtype)
    if exact:
        return exact_staged(split_int32(x.reshape(-1), lanes), x.size, dtype), _NumpyTarget(x, inplace)
    if inplace and x.dtype == np.float32 and x.flags.c_contiguous:
        return _in_place_staged(x, lanes), _NumpyTarget(x, inplace)
    blocks = _alloc(x.size, lanes, np.dtype(np.float32))
    blocks.reshape(-1)[: x.size] = x.reshape(-1)  # casts float16/float64 into the float32 staging
    return _float_staged(blocks, x.size, dtype), _NumpyTarget(x, inplace)


def _stage_torch(x: Any, lanes: int, inplace: bool) -> tuple[Staged, Target]:
    import torch

    if x.device.type != "cpu":
        raise AgentInputError(f"the host agent sums CPU tensors; got a tensor on {x.device}")
    if x.dtype == torch.int32:
        exact = True
    elif x.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        exact = False
    else:
        raise AgentInputError(
            f"cannot all-reduce torch dtype {x.dtype}: supported are float32, float16, bfloat16, float64 "
            "(summed in float32 block floating point) and int32 (exact)"
        )
    if inplace and x.requires_grad and x.is_leaf:
        raise AgentInputError(
            "in-place all-reduce of a leaf tensor that requires grad (use its .grad or detach)"
        )
    count = x.numel()
    dtype = dtype_name(x.dtype)
    shared = _numpy_view(x, torch) if inplace else None
    if shared is not None:
        return _in_place_staged(shared, lanes), _TorchTarget(x, inplace)
    if exact:
        values = np.empty(count, np.int32)
        with torch.no_grad():
            torch.from_numpy(values).copy_(x.detach().reshape(-1))
        return exact_staged(split_int32(values, lanes), count, dtype), _TorchTarget(x, inplace)
    blocks = _alloc(count, lanes, np.dtype(np.float32))
    with torch.no_grad():
        torch.from_numpy(blocks).view(-1)[:count].copy_(x.detach().reshape(-1))
    return _float_staged(blocks, count, dtype), _TorchTarget(x, inplace)


def _numpy_view(x: Any, torch: Any) -> np.ndarray | None:
    """A plain float32 CPU tensor's values as a C-contiguous writable numpy array sharing its memory, else None
    (subclasses, whose ``numpy`` may mean something else, are copied with torch ops like any other tensor)."""
    if type(x) is not torch.Tensor or x.dtype != torch.float32 or x.layout != torch.strided:
        return None
    if not x.is_contiguous() or x.is_conj() or x.is_neg():
        return None
    view = x.detach().numpy()
    return view if view.flags.c_contiguous and view.flags.writeable else None
