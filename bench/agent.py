"""Host agent speed through the software switch on loopback (no root), as ratios measured in the same run.

(a) one agent (world size 1) through ``LocalStack`` (softswitch UDP mode + controller) against a bare UDP loop:
    the same datagram size and window in flight, echoed by a Python process instead of the switch. Goal >= 0.8.
(b) 4 workers x M MiB float32 all-reduce through the software switch (4 ``netagg-agent`` processes).
(c) the same all-reduce with torch's gloo backend (ring all-reduce, 4 processes on loopback), as a reference.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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
from netagg.local import LocalStack, free_port
from netagg.wire import message_bytes

#: Deadline of one multi-process all-reduce run (all ranks, warm-up included).
RUN_TIMEOUT_S = 600.0
RECV_TIMEOUT_S = 5.0


@dataclass
class LoopFigures:
    packets: int
    seconds: float
    retransmissions: int = 0

    @property
    def pps(self) -> float:
        return self.packets / self.seconds


def agent_loop(folder: Path, megabytes: float, lanes: int, window: int, seconds: float) -> tuple[LoopFigures, int]:
    """All-reduces of ``megabytes`` float32 by one agent (world size 1) for at least ``seconds``; (figures, W)."""
    with (
        LocalStack(folder).start() as stack,
        AllReduceClient.join(
            stack.controller(), "bench-single", 1, 0, bind="127.0.0.1", lanes=lanes, window=window
        ) as client,
    ):
        x = np.random.default_rng(0).standard_normal(int(megabytes * 2**20) // 4).astype(np.float32)
        client.allreduce(x.copy())  # untimed: warm-up rounds, allocations
        before, retx = client.stats.updates_sent, client.stats.retransmissions
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.allreduce(x.copy())
        elapsed = time.perf_counter() - start
        stats = client.stats
        return LoopFigures(stats.updates_sent - before, elapsed, stats.retransmissions - retx), client.window


def bare_udp_loop(packets: int, payload_bytes: int, window: int) -> LoopFigures:
    """Send ``packets`` datagrams to a UDP echo process with ``window`` in flight, receiving every reply."""
    echo = ReadyProcess([sys.executable, "-m", "bench.echo", "udp", "127.0.0.1:0"], "UDP echo")
    try:
        host, _, port = echo.address.rpartition(":")
        dest = (host, int(port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(RECV_TIMEOUT_S)
            out = bytearray(payload_bytes)
            buf = bytearray(65536)
            sendto, recv_into = sock.sendto, sock.recv_into
            start = time.perf_counter()
            sent = min(window, packets)
            for _ in range(sent):
                sendto(out, dest)
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
                    sendto(out, dest)
                    sent += 1
            return LoopFigures(packets, time.perf_counter() - start)
    finally:
        echo.stop()


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
    megabytes: float = 16.0,
    single_megabytes: float = 4.0,
    seconds: float = 10.0,
    lanes: int = DEFAULT_LANES,
    windows: tuple[int, ...] = (DEFAULT_WINDOW, 16),
    workers: int = 4,
    gloo: bool = True,
) -> dict[str, float]:
    """Measure (a) at ``windows[0]``, (b) at every window and, with ``gloo``, (c); print and return the figures."""
    window = windows[0]
    figures: dict[str, float] = {}
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="netagg-bench-") as tmp:
        agent, granted = agent_loop(Path(tmp) / "single", single_megabytes, lanes, window, seconds)
        payload = message_bytes(lanes)
        bare = bare_udp_loop(agent.packets, payload, granted)
        figures.update(
            agent_pps=agent.pps,
            bare_pps=bare.pps,
            ratio=agent.pps / bare.pps,
            agent_goodput_MBps=agent.pps * lanes * LANE_BYTES / 1e6,
        )
        rows += [
            (
                f"(a) agent, world 1, {lanes} lanes, W {granted}",
                (
                    f"{agent.pps:,.0f} UPDATEs/s, goodput {figures['agent_goodput_MBps']:.1f} MB/s "
                    f"({agent.packets:,} packets in {agent.seconds:.1f} s, {agent.retransmissions} retransmissions)"
                ),
            ),
            (
                f"    bare UDP loop, {payload} B datagrams, W {granted}",
                f"{bare.pps:,.0f} datagrams/s ({bare.packets:,} in {bare.seconds:.1f} s)",
            ),
            ("    agent / bare", f"{figures['ratio']:.3f}  (goal >= 0.8)"),
        ]
        print("  (a) done", flush=True)
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
    report("host agent through the software switch (UDP mode, loopback)", rows)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--megabytes", type=float, default=16.0, help="(b)/(c) tensor size per worker, MiB (default 16)"
    )
    parser.add_argument("--single-megabytes", type=float, default=4.0, help="(a) tensor size, MiB (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="(a) timed duration (default 10)")
    parser.add_argument("--lanes", type=int, default=DEFAULT_LANES, choices=[32, 64, 128, 256])
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[DEFAULT_WINDOW, 16],
        metavar="W",
        help="slots asked for: (a) uses the first, (b) runs once per value (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=4, help="(b)/(c) processes (default 4)")
    parser.add_argument("--no-gloo", action="store_true", help="skip (c)")
    args = parser.parse_args(argv)
    run(
        args.megabytes,
        args.single_megabytes,
        args.seconds,
        args.lanes,
        tuple(args.windows),
        args.workers,
        not args.no_gloo,
    )


if __name__ == "__main__":
    main()
