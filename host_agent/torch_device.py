"""Switch all-reduces of tensors on a device (a GPU), quantized on that device and streamed in pieces.

The torch backend's path for a tensor that is not in host memory (docs/torch.md, "Tensors on a GPU"). One
all_reduce of a tensor on device D goes:

1. On the caller's thread: an event on the caller's current stream marks when the tensor's values are ready, and
   the all-reduce is queued to the group's feeder (``DeviceFeeder.submit``); the call returns.
2. On the feeder thread, piece by piece (``piece_bytes`` of pre-lanes each), on a side stream of D: wait for that event,
   take the piece as float32 blocks, compute its block exponents and pre-lanes there
   (``torch_quantize.prescale``: all of the quantizer's float arithmetic), copy pre-lanes, exponents and flags
   into a free pinned host buffer, wait for that copy, and hand the piece to the agent (``staging.Prescaled``)
   under the whole all-reduce's descriptor. int32 pieces are split into their lane pairs on D instead.
3. The agent announces the exponents, requantizes each block with integer shifts when its shared exponent comes
   back (``quantize.requantize_reference``; the engine's C kernel), sends it, and lands the summed lanes in the
   same pinned buffer.
4. On the agent's completion thread (``_PieceTarget``): the summed lanes go back to D on the side stream and are
   dequantized there, into the tensor's piece (divided by the group size for AVG).
5. A buffer is used again once its piece's sums are on D: while the agent sends piece k, D prepares the next
   pieces and brings back the previous ones. Host memory is ``buffers`` pieces, whatever the tensor's size.

The pieces are row-aligned and carry the descriptor of the whole all-reduce, so the stream on the wire is the
one of an unpieced all-reduce: a rank summing the same tensor from host memory gets the same bits, and a rank
whose tensor differs fails at the first piece. Every switch all-reduce of the group is handed to the agent in call
order: one on host memory called while device pieces are still waiting queues behind them (``in_order``).

A CUDA device uses a side stream, events and pinned buffers; any other device (and host tensors, when the group
is told to send them this way: ``device_path="always"``) does the same steps synchronously.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from netagg.host_agent import torch_quantize as tq
from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.collective import Collective
from netagg.host_agent.errors import AgentClosedError, AgentError
from netagg.host_agent.staging import Prescaled, Target

log = logging.getLogger(__name__)

#: Default bytes of pre-lanes per piece (the host buffer of one piece), and pinned buffers per group.
DEFAULT_PIECE_BYTES = 1 << 20
DEFAULT_BUFFERS = 4

#: dtypes quantized on the device (as float32 blocks), and the one summed exactly as lane pairs.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EXACT_DTYPE = torch.int32


class _Device:
    """The side stream and events of one device: CUDA's, or synchronous steps for any other."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def caller_point(self) -> Any:
        """An event on the caller's current stream (None where steps are synchronous)."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    @contextlib.contextmanager
    def side(self, after: Any = None) -> Iterator[None]:
        """Run the block's device work on the side stream, after the event ``after``."""
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            yield

    def mark(self) -> Any:
        """An event after the work queued on the side stream so far (None: that work is already done)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


@dataclass(eq=False)
class _Buffer:
    """One pinned piece: pre-lanes (rows, lanes) int32, exponents and non-finite flags, with numpy views of each."""

    lanes: torch.Tensor
    exps: torch.Tensor
    nonfinite: torch.Tensor
    np_lanes: np.ndarray = field(init=False)
    np_exps: np.ndarray = field(init=False)
    np_nonfinite: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.np_lanes, self.np_exps, self.np_nonfinite = self.lanes.numpy(), self.exps.numpy(), self.nonfinite.numpy()


@dataclass(eq=False)
class _Task:
    """One all-reduce on the device: its tensor (flat, contiguous), and how far its pieces got."""

    tensor: torch.Tensor  # the caller's tensor
    flat: torch.Tensor  # its values as one contiguous vector: a view of the tensor, or a copy if it is not contiguous
    descriptor: Collective
    client: AllReduceClient
    dev: _Device
    average: bool
    ready: Any  # the caller's stream event
    future: Future[Any]
    landed: int = 0  # pieces whose sums are written into ``flat`` (or failed)
    total: int = 0  # pieces
    error: BaseException | None = None


@dataclass(eq=False)
class _Piece:
    task: _Task
    start: int  # first value of the piece in the task's flat tensor
    count: int  # values in the piece
    rows: int
    buffer: _Buffer
    future: Future[Any] | None = None
    written: Any = None  # event after its sums were written on the device (the buffer is free after it)


class _PieceTarget(Target):
    """Where a piece's sums go: back to the device, dequantized there (called on the agent's completion thread)."""

    def __init__(self, feeder: DeviceFeeder, piece: _Piece) -> None:
        super().__init__(piece.task.tensor, True)
        self._feeder, self._piece = feeder, piece

    def deliver_lanes(self, sums: np.ndarray, shared_exps: np.ndarray, nonfinite: np.ndarray) -> Any:
        self._feeder.write_back(self._piece, shared_exps, nonfinite)

    def deliver(self, flat: np.ndarray) -> Any:  # an int32 piece: the agent joined its lane pairs
        self._feeder.write_back(self._piece, None, None, joined=flat)


class DeviceFeeder:
    """The group's device all-reduces, quantized on their device and handed to the agent in pieces, in call order."""

    def __init__(
        self,
        num_workers: int,
        lanes: int,
        *,
        piece_bytes: int,
        buffers: int,
        label: str,
        on_give_up: Callable[[int, Collective, BaseException], None] | None = None,
    ) -> None:
        if buffers < 1 or piece_bytes < 4 * lanes:
            raise ValueError(
                f"device pieces need at least one buffer of at least one block ({4 * lanes} bytes); got {buffers} "
                f"of {piece_bytes} bytes"
            )
        self._devices: dict[torch.device, _Device] = {}
        self._pinned = torch.cuda.is_available()  # host buffers the GPU copies to and from by DMA
        self._n = num_workers
        self._lanes = lanes
        self._on_give_up = on_give_up  # told (abort index, descriptor, error) when this rank gives up a collective
        self._rows = piece_bytes // (4 * lanes)
        self._label = label
        # Buffers no piece uses, each with the event after which its last piece's sums were on the device; made
        # when first needed (_ensure_buffers), at least ``buffers`` of them.
        self._buffers = buffers
        self._made = 0
        self._free: list[tuple[_Buffer, Any]] = []
        self._queue: deque[_Task | Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"netagg-device-{label}", daemon=True)
        self._thread.start()

    def _new_buffer(self) -> _Buffer:
        return _Buffer(
            torch.empty((self._rows, self._lanes), dtype=torch.int32, pin_memory=self._pinned),
            torch.empty(self._rows, dtype=torch.int8, pin_memory=self._pinned),
            torch.empty(self._rows, dtype=torch.bool, pin_memory=self._pinned),
        )

    # --- the caller's side ---------------------------------------------------------------------------------

    def submit(
        self, client: AllReduceClient, tensor: torch.Tensor, descriptor: Collective, average: bool
    ) -> Future[Any]:
        """Queue the all-reduce of ``tensor`` (summed in place); the future's value is ``tensor``."""
        flat = tensor.contiguous().view(-1)  # the tensor itself when contiguous, else a copy
        per_row = self._lanes // 2 if tensor.dtype == EXACT_DTYPE else self._lanes
        rows = -(-flat.numel() // per_row)
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        dev = self._devices.get(tensor.device)
        if dev is None:
            dev = self._devices.setdefault(tensor.device, _Device(tensor.device))
        task = _Task(tensor, flat, descriptor, client, dev, average, dev.caller_point(), future,
                     total=-(-rows // self._rows))  # fmt: skip
        if task.total == 0:
            future.set_result(tensor)
            return future
        with self._cond:
            if self._closed:
                raise AgentClosedError(f"{self._label}: the process group was destroyed")
            self._queue.append(task)
            self._cond.notify_all()
        return future

    def in_order(self, submit: Callable[[], None]) -> bool:
        """Run ``submit`` (a host-memory all-reduce's hand-over to the agent) after the queued device pieces: False
        if nothing is queued (the caller hands it over itself, now), True if it was queued behind them."""
        with self._cond:
            if not self._queue:
                return False
            self._queue.append(submit)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """Fail what is queued and stop the feeder (the agent fails what it holds when its client closes)."""
        with self._cond:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        error = AgentClosedError(f"{self._label}: the process group was destroyed")
        for item in queued:
            if isinstance(item, _Task):
                _fail(item, error)
            else:
                item()  # a queued host all-reduce: its client is closed, so it fails through its own future

    # --- the feeder thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                item = self._queue[0]
            try:
                if isinstance(item, _Task):
                    self._feed(item)
                else:
                    item()
            except BaseException as exc:  # noqa: BLE001 - the task's future carries it; the feeder goes on
                if isinstance(item, _Task):
                    _fail(item, exc)
                log.warning("%s: a device all-reduce failed while being handed over: %s", self._label, exc)
            with self._cond:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()

    def _give_up(self, task: _Task, error: BaseException) -> None:
        """The device failed on a piece: an ABORT in its place makes every rank fail the all-reduce at once."""
        try:
            index = task.client.give_up(task.descriptor, error)
        except AgentError as exc:  # the client is already broken or closed: the others learn of it that way
            log.warning("%s: could not tell the other ranks of %s: %s", self._label, task.descriptor, exc)
            return
        if self._on_give_up is not None:
            self._on_give_up(index, task.descriptor, error)

    def _ensure_buffers(self, window: int) -> None:
        """Enough buffers to keep ``2 * window`` blocks handed over ahead of the oldest piece in flight.

        The ranks' rounds share the switch's slots in stream order (docs/host_agent.md): a round announcing a
        block further on may come before the data of blocks in flight, and a rank that cannot announce it because
        its buffers are full would stall every rank, itself included. Two windows of blocks ahead are enough.
        """
        needed = max(self._buffers, -(-2 * window // self._rows) + 1)
        with self._cond:
            while self._made < needed:
                self._free.append((self._new_buffer(), None))
                self._made += 1

    @property
    def buffers(self) -> int:
        """Host buffers made so far (each of one piece)."""
        return self._made

    def _feed(self, task: _Task) -> None:
        self._ensure_buffers(task.client.window)
        per_row = self._lanes // 2 if task.flat.dtype == EXACT_DTYPE else self._lanes
        count = task.flat.numel()
        for start in range(0, count, self._rows * per_row):
            if task.error is not None:  # the agent failed an earlier piece: its client is broken, stop here
                return
            buffer = self._take_buffer()
            n = min(count - start, self._rows * per_row)
            piece = _Piece(task, start, n, -(-n // per_row), buffer)
            try:
                prescaled = self._prepare(piece)
            except BaseException as exc:
                with self._cond:
                    self._free.append((buffer, None))
                self._give_up(task, exc)
                raise
            try:
                piece.future = task.client.allreduce_async(prescaled, descriptor=task.descriptor)
            except BaseException:
                with self._cond:
                    self._free.append((buffer, None))
                raise
            piece.future.add_done_callback(lambda f, p=piece: self._piece_done(p, f))

    def _prepare(self, piece: _Piece) -> Prescaled:
        """The piece's pre-lanes (or lane pairs), exponents and flags in its pinned buffer, copies finished."""
        task, buf, m, lanes = piece.task, piece.buffer, piece.rows, self._lanes
        exact = task.flat.dtype == EXACT_DTYPE
        with torch.no_grad(), task.dev.side(task.ready):
            values = task.flat[piece.start : piece.start + piece.count]
            if exact:
                blocks = tq.split_int32(values, lanes)
                buf.exps[:m].zero_()
                buf.nonfinite[:m].zero_()
            else:
                padded = values.to(torch.float32)
                if padded.numel() != m * lanes:
                    padded = torch.nn.functional.pad(padded, (0, m * lanes - padded.numel()))
                padded = padded.view(m, lanes)
                exps, nonfinite = tq.block_exponents(padded)
                blocks = tq.prescale(padded, exps, nonfinite, self._n)
                buf.exps[:m].copy_(exps, non_blocking=True)
                buf.nonfinite[:m].copy_(nonfinite, non_blocking=True)
            buf.lanes[:m].copy_(blocks, non_blocking=True)
            copied = task.dev.mark()
        if copied is not None:
            copied.synchronize()  # the agent reads the buffer from now on
        return Prescaled(buf.np_lanes[:m], buf.np_exps[:m], buf.np_nonfinite[:m], piece.count, task.descriptor.dtype,
                         _PieceTarget(self, piece), exact=exact, part=True)  # fmt: skip

    def _take_buffer(self) -> _Buffer:
        """A free buffer, once the sums of its last piece are on the device; waits for a piece in flight to land
        (the agent resolves every piece by its deadline)."""
        with self._cond:
            while not self._free:
                self._cond.wait()
            buffer, written = self._free.pop()
        if written is not None:
            written.synchronize()
        return buffer

    # --- the agent's completion thread ---------------------------------------------------------------------

    def write_back(self, piece: _Piece, shared: np.ndarray | None, nonfinite: np.ndarray | None, *,
                   joined: np.ndarray | None = None) -> None:  # fmt: skip
        """Bring a piece's sums to the device and write them into its task's tensor (on the side stream)."""
        task, m = piece.task, piece.rows
        device = task.dev.device
        with torch.no_grad(), task.dev.side():
            if joined is not None:
                values = torch.from_numpy(joined).to(device)
            else:
                sums = piece.buffer.lanes[:m].to(device, non_blocking=True)
                used = torch.from_numpy(shared).to(device)
                flags = torch.from_numpy(nonfinite).to(device)
                values = tq.dequantize(sums, used, self._n, flags).view(-1)[: piece.count]
            out = task.flat[piece.start : piece.start + piece.count]
            out.copy_(values)
            if task.average:
                if out.is_floating_point():
                    out.div_(self._n)
                else:
                    out.floor_divide_(self._n)
            piece.written = task.dev.mark()

    def _piece_done(self, piece: _Piece, future: Future[Any]) -> None:
        task = piece.task
        error = future.exception()
        with self._cond:  # the agent is done with the buffer: free once the sums written from it are on the device
            self._free.append((piece.buffer, piece.written))
            task.landed += 1
            if error is not None and task.error is None:
                task.error = error
            finished = task.landed == task.total
            self._cond.notify_all()
        if error is not None:
            _fail(task, error)
        elif finished and not task.future.done():
            self._finish(task)

    def _finish(self, task: _Task) -> None:
        try:
            with torch.no_grad(), task.dev.side():
                if not task.tensor.is_contiguous():  # ``flat`` is a copy: the sums go back into the tensor
                    task.tensor.copy_(task.flat.view(task.tensor.shape))
                done = task.dev.mark()
            if done is not None:
                done.synchronize()  # the sums are in the tensor for every stream once the work completes
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            _fail(task, exc)
            return
        if not task.future.done():
            task.future.set_result(task.tensor)


def _fail(task: _Task, error: BaseException) -> None:
    if task.error is None:
        task.error = error
    if not task.future.done():
        task.future.set_exception(error)
