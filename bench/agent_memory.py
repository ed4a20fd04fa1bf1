"""Peak memory of one float32 all-reduce by the host agent, next to the tensor's size; prints one JSON line.

python -m bench.agent_memory [--megabytes 381] [--copy] [--torch]

One agent (world size 1) all-reduces a tensor through a reflector thread of the same process, which answers every
UPDATE with its RESULT (for one worker the switch's answer is the UPDATE itself). ``baseline_MB`` is the resident
set with the tensor allocated and written, right before the all-reduce; ``peak_MB`` the peak resident set from
then until the all-reduce returned (VmHWM, reset right before); ``overhead`` = (peak - baseline) / tensor. In place
(the default) the agent needs no copy of the tensor; ``--copy`` measures ``inplace=False``, which returns a new
array (one more tensor); ``--torch`` all-reduces a torch CPU tensor instead of a numpy array (what the torch
backend hands the agent).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading

import numpy as np

from netagg.host_agent.burst import BurstSocket, headers
from netagg.host_agent.client import AllReduceClient
from netagg.host_agent.session import JoinResult, SwitchEndpoint
from netagg.wire import message_bytes

_RESULT_BIT = 0x10  # msg_type RESULT in header byte 0


def resident_bytes() -> int:
    """The process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """The peak resident set of this process's memory since it started or ``reset_peak``: VmHWM.

    Not ``ru_maxrss``: Linux carries that across ``execve``, so a child of a large process (a test runner)
    would report its parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    """Make the peak resident set start again from the current one (kernel 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Reflector:
    """A one-worker switch on a thread: every UPDATE goes back as its RESULT, in bursts."""

    def __init__(self, lanes: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.seg = message_bytes(lanes)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, peer: tuple[str, int]) -> None:
        self.sock.connect(peer)
        self.sock.settimeout(0.05)
        self._io = BurstSocket(self.sock, self.seg, 256, send_mode="sendmmsg", recv_mode="recvmmsg")
        self._thread.start()

    def _run(self) -> None:
        b0 = headers(self._io.rbuf, 256, self.seg)["b0"]
        while not self._stop:
            try:
                self.sock.recv(1, socket.MSG_PEEK)  # wait (at most the timeout) for a datagram
            except (TimeoutError, ConnectionRefusedError):
                continue
            good, _ = self._io.recv(256)
            b0[:good] |= _RESULT_BIT
            self._io.send(self._io.rbuf, good)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def measure(
    megabytes: float, inplace: bool = True, lanes: int = 256, window: int = 64, use_torch: bool = False
) -> dict[str, float]:
    reflector = Reflector(lanes)
    addr = reflector.sock.getsockname()
    session = JoinResult(job="memory", job_id=1, worker_id=0, world_size=1, lanes=lanes, slots=window, epoch=1,
                         switch=SwitchEndpoint("02:00:00:00:00:01", *addr), key=0x600D)  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    reflector.start(sock.getsockname())
    try:
        with AllReduceClient(session, sock) as client:
            client.allreduce(np.ones(lanes * window * 4, np.float32))  # warm: buffers, the receive mode
            count = int(megabytes * 2**20) // 4
            x = np.empty(count, np.float32)
            x[:] = np.float32(0.5)
            x[::7] = np.float32(-3.25)
            if use_torch:
                import torch

                x = torch.from_numpy(x)  # the same memory, as a tensor
            reset_peak()
            baseline = resident_bytes()
            result = client.allreduce(x, inplace=inplace)
            peak = peak_resident_bytes()
            if use_torch:
                result = result.numpy()
            expected = np.full(count, np.float32(0.5))  # exact in block floating point: the sum of one worker
            expected[::7] = np.float32(-3.25)
            ok = bool(np.array_equal(result, expected))
            del expected
    finally:
        reflector.close()
    tensor = count * 4
    return {
        "tensor_MB": tensor / 1e6,
        "baseline_MB": baseline / 1e6,
        "peak_MB": peak / 1e6,
        "overhead": (peak - baseline) / tensor,
        "inplace": inplace,
        "torch": use_torch,
        "result_ok": ok,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=381.0, help="float32 tensor size, MiB (default 381)")
    parser.add_argument("--copy", action="store_true", help="inplace=False (the result is a new array)")
    parser.add_argument("--torch", action="store_true", help="a torch CPU tensor instead of a numpy array")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.megabytes, inplace=not args.copy, use_torch=args.torch)), flush=True)


if __name__ == "__main__":
    main()
