"""Host agent speed on loopback (no root), as ratios measured side by side in the same run.

(a) the agent's data path: one agent (world size 1) all-reducing float32 through ``udp_loops reflect``, a C
    process that answers every UPDATE with its RESULT (for one worker the switch's answer is the UPDATE itself;
    like the software switch's UDP mode it sends a batch's replies to one sender as UDP GSO messages),
    against two loops that send the same datagrams with the same window in flight to the same reflector: the bare
    per-datagram Python UDP loop (goal: agent >= 2x) and a C sendmmsg/recvmmsg loop, the machine's limit
    (goal: agent >= 0.5x). Repeated, in turn, with the spread and the load average.
(b) 4 workers x M MiB float32 all-reduce through the software switch (4 ``netagg-agent`` processes).
(c) the same all-reduce with torch's gloo backend (ring all-reduce, 4 processes on loopback), as a reference.

The C loops (bench/udp_loops.c) are compiled with gcc into a temporary folder for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import report
from bench.procs import REPO, ReadyProcess
from netagg.constants import LANE_BYTES
from netagg.host_agent.client import DEFAULT_LANES, DEFAULT_WINDOW, AllReduceClient
from netagg.host_agent.session import JoinResult, SwitchEndpoint
from netagg.local import LocalStack, free_port
from netagg.wire import message_bytes

#: Deadline of one multi-process all-reduce run (all ranks, warm-up included).
RUN_TIMEOUT_S = 600.0
RECV_TIMEOUT_S = 5.0
LOOPS_SOURCE = REPO / "bench" / "udp_loops.c"


@dataclass
class LoopFigures:
    packets: int
    seconds: float
    retransmissions: int = 0
    detail: str = ""

    @property
    def pps(self) -> float:
        return self.packets / self.seconds


def build_loops(folder: Path) -> Path:
    """Compile bench/udp_loops.c with gcc into ``folder``; the path of the program."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("bench.agent needs gcc for its C loops (Debian: apt-get install gcc)")
    out = folder / "udp_loops"
    subprocess.run([gcc, "-O2", "-o", str(out), str(LOOPS_SOURCE)], check=True)
    return out


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def agent_loop(reflector: tuple[str, int], megabytes: float, lanes: int, window: int, seconds: float,
               **options: object) -> LoopFigures:  # fmt: skip
    """All-reduces of ``megabytes`` float32 by one agent (world size 1) through the reflector for ``seconds``."""
    session = JoinResult(job="bench-single", job_id=1, worker_id=0, world_size=1, lanes=lanes, slots=window,
                         epoch=1, switch=SwitchEndpoint("02:00:00:00:00:01", *reflector), key=0x5EC12E7)  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    with AllReduceClient(session, sock, **options) as client:  # type: ignore[arg-type]
        x = np.random.default_rng(0).standard_normal(int(megabytes * 2**20) // 4).astype(np.float32)
        client.allreduce(x.copy())  # untimed: warm-up rounds, allocations, the receive mode settles
        before, retx = client.stats.updates_sent, client.stats.retransmissions
        calls = client.stats.send_calls + client.stats.recv_calls
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.allreduce(x)  # in place: the sum of one worker is its own tensor, quantized
        elapsed = time.perf_counter() - start
        stats = client.stats
        packets = stats.updates_sent - before
        per_call = packets / max(stats.send_calls + stats.recv_calls - calls, 1)
        detail = (f"send {stats.send_mode}, receive {stats.recv_mode}, {per_call:.1f} datagrams per system call, "
                  f"window {stats.window:.0f}")  # fmt: skip
        return LoopFigures(packets, elapsed, stats.retransmissions - retx, detail)


def python_loop(reflector: tuple[str, int], packets: int, payload_bytes: int, window: int) -> LoopFigures:
    """Send ``packets`` datagrams to the reflector with ``window`` in flight, one system call per datagram."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.connect(reflector)
        sock.settimeout(RECV_TIMEOUT_S)
        out = bytearray(payload_bytes)
        buf = bytearray(65536)
        send, recv_into = sock.send, sock.recv_into
        start = time.perf_counter()
        sent = min(window, packets)
        for _ in range(sent):
            send(out)
        received = 0
        while received < packets:
            try:
                recv_into(buf)
            except TimeoutError as exc:
                raise RuntimeError(
                    f"bare UDP loop: no reply for {RECV_TIMEOUT_S} s "
                    f"({received} of {packets} received; loopback dropped some)"
                ) from exc
            received += 1
            if sent < packets:
                send(out)
                sent += 1
        return LoopFigures(packets, time.perf_counter() - start)


def c_loop(program: Path, reflector: tuple[str, int], packets: int, payload_bytes: int, window: int) -> LoopFigures:
    """The same loop in C with sendmmsg/recvmmsg (bench/udp_loops.c)."""
    argv = [str(program), "loop", f"{reflector[0]}:{reflector[1]}", str(packets), str(payload_bytes), str(window)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"C loop failed: {done.stderr.strip()}")
    count, seconds = done.stdout.split()
    return LoopFigures(int(count), float(seconds))


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


def data_path(megabytes: float, lanes: int, window: int, seconds: float, repeat: int) -> dict[str, float]:
    """(a): agent, Python loop and C loop in turn, ``repeat`` times; prints and returns the figures."""
    payload = message_bytes(lanes)
    agent_pps, python_pps, c_pps, ratios_py, ratios_c = [], [], [], [], []
    detail, retx = "", 0
    with tempfile.TemporaryDirectory(prefix="netagg-bench-") as tmp:
        program = build_loops(Path(tmp))
        reflector = ReadyProcess([str(program), "reflect"], "UDP reflector")
        try:
            addr = _address(reflector.address)
            for _ in range(repeat):
                agent = agent_loop(addr, megabytes, lanes, window, seconds)
                bare = python_loop(addr, agent.packets, payload, window)
                fast = c_loop(program, addr, max(agent.packets, 200_000), payload, window)
                agent_pps.append(agent.pps)
                python_pps.append(bare.pps)
                c_pps.append(fast.pps)
                ratios_py.append(agent.pps / bare.pps)
                ratios_c.append(agent.pps / fast.pps)
                detail, retx = agent.detail, retx + agent.retransmissions
        finally:
            reflector.stop()
    rows = [
        (f"(a) agent, world 1, {lanes} lanes, W {window}", f"{_spread(agent_pps)} UPDATEs/s; {detail}; "
                                                            f"{retx} retransmissions"),  # fmt: skip
        (f"    Python loop, {payload} B datagrams, W {window}", f"{_spread(python_pps)} datagrams/s"),
        ("    C sendmmsg/recvmmsg loop, same", f"{_spread(c_pps)} datagrams/s"),
        ("    agent / Python loop", f"{statistics.median(ratios_py):.2f} (each run: "
                                    f"{', '.join(f'{r:.2f}' for r in ratios_py)}; goal >= 2)"),  # fmt: skip
        ("    agent / C loop", f"{statistics.median(ratios_c):.2f} (each run: "
                               f"{', '.join(f'{r:.2f}' for r in ratios_c)}; goal >= 0.5)"),  # fmt: skip
        ("    goodput", f"{statistics.median(agent_pps) * lanes * LANE_BYTES / 1e6:.0f} MB/s"),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]
    report("host agent data path (loopback, C reflector as the switch of a one-worker job)", rows)
    return {
        "agent_pps": statistics.median(agent_pps),
        "python_pps": statistics.median(python_pps),
        "c_pps": statistics.median(c_pps),
        "agent_over_python": statistics.median(ratios_py),
        "agent_over_c": statistics.median(ratios_c),
    }


def _collect(procs: list[subprocess.Popen[str]], what: str) -> list[dict[str, float]]:
    """One JSON line from every rank process, waiting at most RUN_TIMEOUT_S in all."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    out = []
    try:
        for proc in procs:
            try:
                stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{what}: a rank did not finish within {RUN_TIMEOUT_S} s") from exc
            if proc.returncode != 0:
                raise RuntimeError(f"{what}: rank exited with {proc.returncode}:\n{stderr[-2000:]}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # by PID, only if still running (after a failure)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return out


def netagg_allreduce(
    folder: Path, world: int, megabytes: float, lanes: int, window: int | None
) -> list[dict[str, float]]:
    """``world`` netagg-agent processes through one LocalStack; their JSON reports."""
    agent = Path(sys.executable).parent / "netagg-agent"
    with LocalStack(folder).start() as stack:
        argv = [
            str(agent),
            "--controller",
            stack.api,
            "--job",
            "bench-allreduce",
            "--world-size",
            str(world),
            "--size",
            str(int(megabytes * 2**20) // 4 * 4),
            "--lanes",
            str(lanes),
            "--iterations",
            "1",
            "--json",
        ]
        if window is not None:
            argv += ["--window", str(window)]
        procs = [
            subprocess.Popen(argv + ["--rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(world)
        ]
        return _collect(procs, "netagg all-reduce")


def gloo_allreduce(world: int, megabytes: float) -> list[dict[str, float]]:
    """``world`` processes of a torch gloo all-reduce on loopback; their JSON reports."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.gloo_allreduce",
        "--world-size",
        str(world),
        "--port",
        str(port),
        "--megabytes",
        str(megabytes),
    ]
    procs = [
        subprocess.Popen(argv + ["--rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for r in range(world)
    ]
    return _collect(procs, "gloo all-reduce")


def _ranks_row(reports: list[dict[str, float]]) -> str:
    total = max(r["mean_seconds"] for r in reports)
    goodputs = ", ".join(f"{r['goodput_MBps']:.1f}" for r in sorted(reports, key=lambda r: r["rank"]))
    retx = sum(int(r.get("retransmissions", 0)) for r in reports)
    extra = f", {retx} retransmissions" if "retransmissions" in reports[0] else ""
    return f"total {total:.2f} s; per-worker goodput MB/s: {goodputs}{extra}"


def run(
    megabytes: float = 64.0,
    single_megabytes: float = 4.0,
    seconds: float = 3.0,
    lanes: int = DEFAULT_LANES,
    windows: tuple[int, ...] = (DEFAULT_WINDOW,),
    workers: int = 4,
    gloo: bool = True,
    repeat: int = 3,
    only: str = "",
) -> dict[str, float]:
    """Measure (a) at ``windows[0]``, (b) at every window and, with ``gloo``, (c); print and return the figures."""
    figures: dict[str, float] = {}
    if only in ("", "data-path"):
        figures.update(data_path(single_megabytes, lanes, windows[0], seconds, repeat))
    if only == "data-path":
        return figures
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="netagg-bench-") as tmp:
        for w in windows:
            netagg = netagg_allreduce(Path(tmp) / f"multi-{w}", workers, megabytes, lanes, w)
            seconds_w = max(r["mean_seconds"] for r in netagg)
            figures[f"netagg_seconds_w{w}"] = seconds_w
            figures["netagg_seconds"] = min(figures.get("netagg_seconds", seconds_w), seconds_w)
            rows.append(
                (
                    f"(b) netagg {workers} x {megabytes:g} MiB float32, W {netagg[0]['window']}",
                    _ranks_row(netagg),
                )
            )
            print(f"  (b) W {w} done", flush=True)
    if gloo:
        ring = gloo_allreduce(workers, megabytes)
        figures["gloo_seconds"] = max(r["mean_seconds"] for r in ring)
        rows.append((f"(c) gloo {workers} x {megabytes:g} MiB float32", _ranks_row(ring)))
        rows.append(
            (
                "    netagg time (best W) / gloo time",
                f"{figures['netagg_seconds'] / figures['gloo_seconds']:.1f}",
            )
        )
    rows.append(("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    report("all-reduce through the software switch (UDP mode, loopback) and gloo's ring", rows)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--megabytes", type=float, default=64.0, help="(b)/(c) tensor size per worker, MiB (default 64)"
    )
    parser.add_argument("--single-megabytes", type=float, default=4.0, help="(a) tensor size, MiB (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="(a) timed duration of each run (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="(a) runs of each of the three loops (default 3)")
    parser.add_argument("--lanes", type=int, default=DEFAULT_LANES, choices=[32, 64, 128, 256])
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[DEFAULT_WINDOW],
        metavar="W",
        help="slots asked for: (a) uses the first, (b) runs once per value (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=4, help="(b)/(c) processes (default 4)")
    parser.add_argument("--no-gloo", action="store_true", help="skip (c)")
    parser.add_argument("--only", choices=["data-path", "all-reduce"], default="", help="run (a) or (b)+(c) only")
    args = parser.parse_args(argv)
    run(
        args.megabytes,
        args.single_megabytes,
        args.seconds,
        args.lanes,
        tuple(args.windows),
        args.workers,
        not args.no_gloo,
        args.repeat,
        args.only,
    )


if __name__ == "__main__":
    main()
