"""Software switch packets/s for 4 workers, as ratios to a bare AF_PACKET echo and to BMv2 in the same run.

Goals: >= 0.4x the bare echo's aggregated packets/s, >= 4x BMv2's. Needs root (namespaces, veth, AF_PACKET).

Workload: the target (echo, softswitch, BMv2) runs in a namespace of its own behind 4 veth ports; this process
is the generator on the other ends. It sends pre-built UPDATE frames for 4 workers (one per port, each its own
IPv4 address and UDP source port) on a window of slots, round after round, and counts the RESULTs (for the echo:
the frames coming back). A slot starts its next round only when all 4 RESULTs of the previous one arrived (closed
loop), so the offered load is bounded by the window and loss cannot inflate the count; a round still missing
RESULTs after a timeout has the missing workers' UPDATEs resent (counted as loss).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from bench.common import report
from bench.procs import REPO, ReadyProcess
from netagg.constants import MsgType
from netagg.wire import AGG_OFFSET, HEADER_FIELDS, pack_header, size_for_lanes

NUM_WORKERS = 4
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SOCKET_BUFFER_BYTES = 4 << 20
#: A round missing RESULTs this long has the missing workers' UPDATEs resent.
RETRANSMIT_S = 0.5
WARMUP_S = 0.5
DRAIN_S = 2.0
#: Byte offset of ``tsi`` in the aggregation header, from the one description of the header.
_TSI_BYTE = sum(width for name, width in HEADER_FIELDS[: [n for n, _ in HEADER_FIELDS].index("tsi")]) // 8
_TSI = struct.Struct("!I")
_UDP_CHECKSUM = AGG_OFFSET - 2


def conformance() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """The conformance suite's harness modules: (netns_util, targets, program, p4rt).

    The suite imports ``netns_util`` as a top-level module (pytest puts tests/ on sys.path); outside pytest it
    is loaded from its file under that name, so the suite's own modules import unchanged.
    """
    if "netns_util" not in sys.modules:
        spec = importlib.util.spec_from_file_location("netns_util", REPO / "tests" / "netns_util.py")
        if spec is None or spec.loader is None:
            raise ImportError("tests/netns_util.py not found (run from a source checkout)")
        module = importlib.util.module_from_spec(spec)
        sys.modules["netns_util"] = module
        spec.loader.exec_module(module)
    from tests.conformance import p4rt, program, targets

    return sys.modules["netns_util"], targets, program, p4rt


@dataclass
class Figures:
    """One target at one lane count."""

    target: str
    lanes: int
    seconds: float
    results: int  # RESULT frames received in the timed window
    rounds: int  # rounds completed in the timed window
    sent: int  # UPDATE frames sent, whole run
    resent: int  # of those, retransmissions
    unanswered: int  # RESULTs still missing when the run ended
    generator_cpu: float  # CPU seconds of this process per wall second in the timed window (1.0: one core busy)

    @property
    def pps(self) -> float:
        return self.results / self.seconds

    @property
    def loss(self) -> float:
        return self.resent / self.sent if self.sent else 0.0


class Generator:
    """Closed-loop UPDATE generator on the test ends of the ports (one worker per port)."""

    def __init__(self, ifaces: dict[int, str], job: object, lanes: int, window: int) -> None:
        self.window = window
        self.lanes = lanes
        self.size = size_for_lanes(lanes)
        self.job = job
        workers = list(job.workers)  # type: ignore[attr-defined]
        if sorted(w.port for w in workers) != sorted(ifaces):
            raise ValueError("the generator needs exactly one worker per port")
        self.ports = sorted(ifaces)
        self.socks: dict[int, socket.socket] = {}
        for port in self.ports:
            # ETH_P_IP, not ETH_P_ALL: the kernel hands our own transmissions only to ETH_P_ALL taps.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            sock.bind((ifaces[port], ETH_P_IP))
            sock.setblocking(False)
            self.socks[port] = sock
        rng = np.random.default_rng(lanes)
        # One frame per (port, slot), built once; a send only rewrites the header. The UDP checksum is 0 ("none"
        # in IPv4), so rewriting the header cannot make it wrong.
        self.frames: dict[tuple[int, int], bytearray] = {}
        for w in workers:
            values = rng.integers(-1000, 1000, size=lanes, dtype=np.int32)
            for slot in range(window):
                frame = bytearray(_update_frame(w, job, slot, values))
                frame[_UDP_CHECKSUM:AGG_OFFSET] = b"\0\0"
                self.frames[(w.port, slot)] = frame

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def _send(self, port: int, slot: int, tsi: int, set_bit: int) -> None:
        frame = self.frames[(port, slot)]
        pack_header(frame, AGG_OFFSET, msg_type=MsgType.UPDATE, size=self.size, job=self.job.job,  # type: ignore[attr-defined]
                    tsi=tsi, slot=slot, set=set_bit, exp=0)  # fmt: skip
        self.socks[port].send(frame)

    def run(self, target: str, seconds: float) -> Figures:
        """Warm up, count for ``seconds``, then stop issuing rounds and wait for what is in flight."""
        window, ports = self.window, self.ports
        full = (1 << len(ports)) - 1
        bit = {port: 1 << i for i, port in enumerate(ports)}
        rnd = [0] * window
        missing = [0] * window
        sent_at = [0.0] * window
        sent = resent = 0
        results = rounds = 0
        by_fd = {sock.fileno(): (port, sock) for port, sock in self.socks.items()}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        buf = bytearray(65536)
        tsi_at = AGG_OFFSET + _TSI_BYTE
        unpack_tsi = _TSI.unpack_from

        def start_round(slot: int) -> None:
            nonlocal sent
            tsi = (rnd[slot] * window + slot) & 0xFFFFFFFF
            for port in ports:
                self._send(port, slot, tsi, rnd[slot] & 1)
            sent += len(ports)
            missing[slot] = full
            sent_at[slot] = time.monotonic()

        t0 = time.monotonic()
        t_start, t_stop = t0 + WARMUP_S, t0 + WARMUP_S + seconds
        issuing = True
        counting = False
        next_scan = t0 + RETRANSMIT_S / 5
        for slot in range(window):
            start_round(slot)
        while True:
            now = time.monotonic()
            if not counting and issuing and now >= t_start:
                counting, results, rounds = True, 0, 0
                cpu_start = time.process_time()
            if issuing and now >= t_stop:
                issuing, counting = False, False
                measured = (results, rounds, now - t_start, time.process_time() - cpu_start)
                drain_end = now + DRAIN_S
            if not issuing and (not any(missing) or now >= drain_end):
                break
            for fd, _ in poller.poll(20):
                port, sock = by_fd[fd]
                pbit = bit[port]
                while True:
                    try:
                        n, addr = sock.recvfrom_into(buf)
                    except BlockingIOError:
                        break
                    if addr[2] == PACKET_OUTGOING or n < tsi_at + 4:
                        continue
                    tsi = unpack_tsi(buf, tsi_at)[0]
                    slot = tsi % window
                    if tsi != (rnd[slot] * window + slot) & 0xFFFFFFFF or not missing[slot] & pbit:
                        continue  # a duplicate, or a RESULT of an earlier round
                    missing[slot] &= ~pbit
                    results += 1
                    if not missing[slot]:
                        rounds += 1
                        rnd[slot] += 1
                        if issuing:
                            start_round(slot)
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + RETRANSMIT_S / 5
                for slot in range(window):
                    if missing[slot] and now - sent_at[slot] >= RETRANSMIT_S:
                        tsi = (rnd[slot] * window + slot) & 0xFFFFFFFF
                        for port in ports:
                            if missing[slot] & bit[port]:
                                self._send(port, slot, tsi, rnd[slot] & 1)
                                sent += 1
                                resent += 1
                        sent_at[slot] = now
        got, done, elapsed, cpu = measured
        unanswered = sum(bin(m).count("1") for m in missing)
        return Figures(target, self.lanes, elapsed, got, done, sent, resent, unanswered, cpu / elapsed)


def _update_frame(worker: object, job: object, slot: int, values: np.ndarray) -> bytes:
    from tests.conformance.frames import update_frame
    from tests.conformance.program import AGG

    return update_frame(worker.endpoint, AGG, job=job.job, tsi=slot, slot=slot, set=0, lanes=values)  # type: ignore[attr-defined]


@contextmanager
def _echo_target(namespace: str, netns_util: ModuleType) -> Iterator[None]:
    proc = ReadyProcess(netns_util.in_namespace(namespace, [sys.executable, "-m", "bench.echo", "afpacket"]),
                        "AF_PACKET echo")  # fmt: skip
    try:
        yield
    finally:
        proc.stop()


def measure(lane_counts: list[int], window: int, seconds: float, with_bmv2: bool) -> list[Figures]:
    """Every target at every lane count, one after another, on one namespace topology."""
    netns_util, targets, program, p4rt = conformance()
    names = ["echo", "softswitch"] + (["bmv2"] if with_bmv2 else [])
    out: list[Figures] = []
    topology = netns_util.Topology(tag="bn", ports=NUM_WORKERS)
    port_numbers = list(range(1, NUM_WORKERS + 1))
    with ExitStack() as stack:
        topology.create()
        stack.callback(topology.close)
        workdir = Path(tempfile.mkdtemp(prefix="netagg-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        test_ifaces = dict(zip(port_numbers, topology.test_ifaces))
        switch_ifaces = dict(zip(port_numbers, topology.switch_ifaces))
        for name in names:
            with ExitStack() as target_stack:
                session = None
                if name == "echo":
                    target_stack.enter_context(_echo_target(topology.namespace, netns_util))
                else:
                    target = targets.Target(name)
                    reason = target.unavailable_reason()
                    if reason:
                        raise RuntimeError(f"{name}: {reason}")
                    proc = targets.TargetProcess(target, topology.namespace, switch_ifaces, workdir)
                    proc.start()
                    target_stack.callback(proc.stop)
                    session = p4rt.P4RuntimeSession(proc.grpc_addr, targets.P4INFO, targets.BMV2_JSON,
                                                    targets.DEVICE_ID)  # fmt: skip
                    session.open()
                    target_stack.callback(session.close)
                    target_stack.callback(session.delete_multicast_groups)  # BMv2 keeps them across pushes
                    session.modify([program.agg_addr_entry()])
                for i, lanes in enumerate(lane_counts):
                    job = program.Job(job=i + 1, workers=program.make_workers(i + 1, NUM_WORKERS, port_numbers),
                                      pool_base=i * window, pool_size=window, size=size_for_lanes(lanes), epoch=1)  # fmt: skip
                    if session is not None:
                        session.insert(program.worker_entries(job) + program.result_entries(job)
                                       + [program.job_group(job)])  # fmt: skip
                    gen = Generator(test_ifaces, job, lanes, window)
                    try:
                        figures = gen.run(name, seconds)
                    finally:
                        gen.close()
                    out.append(figures)
                    print(f"  {name} {lanes} lanes: {figures.pps:,.0f} RESULTs/s, loss {figures.loss:.2%}, "
                          f"generator CPU {figures.generator_cpu:.2f}",
                          flush=True)  # fmt: skip
    return out


def run(lane_counts: list[int] | None = None, window: int = 32, seconds: float = 8.0,
        bmv2: str = "auto") -> list[Figures] | None:  # fmt: skip
    """Measure and print; None (after printing why) when it cannot run here."""
    lane_counts = lane_counts or [64, 256]
    if os.geteuid() != 0:
        print("== softswitch packets/s\n  skipped: needs root (network namespaces, veth pairs, AF_PACKET)")
        return None
    netns_util, targets, _, _ = conformance()
    reason = netns_util.missing_requirements() or targets.Target("softswitch").unavailable_reason()
    if reason:
        print(f"== softswitch packets/s\n  skipped: {reason}")
        return None
    bmv2_reason = targets.Target("bmv2").unavailable_reason()
    if bmv2 == "yes" and bmv2_reason:
        raise SystemExit(f"bmv2: {bmv2_reason}")
    with_bmv2 = bmv2 != "no" and bmv2_reason is None
    print(f"measuring ({NUM_WORKERS} workers, window {window} slots, {seconds:g} s per point)", flush=True)
    figures = measure(lane_counts, window, seconds, with_bmv2)
    by = {(f.target, f.lanes): f for f in figures}
    rows: list[tuple[str, str]] = []
    for f in figures:
        rows.append((f"{f.target}, {f.lanes} lanes",
                     f"{f.pps:>10,.0f} RESULTs/s  ({f.pps / NUM_WORKERS:,.0f} rounds/s, {f.pps * 4 * f.lanes / 1e6:.1f} "
                     f"MB/s of lanes in)  loss {f.loss:.2%}, unanswered {f.unanswered}, "
                     f"generator CPU {f.generator_cpu:.2f}"))  # fmt: skip
    for lanes in lane_counts:
        sw = by[("softswitch", lanes)]
        rows.append((f"softswitch / echo, {lanes} lanes", f"{sw.pps / by[('echo', lanes)].pps:.3f}  (goal >= 0.4)"))
        if ("bmv2", lanes) in by:
            rows.append((f"softswitch / BMv2, {lanes} lanes", f"{sw.pps / by[('bmv2', lanes)].pps:.2f}  (goal >= 4)"))
    if not with_bmv2:
        rows.append(("BMv2", f"not measured: {bmv2_reason or 'disabled (--bmv2 no)'}"))
    rows.append(("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    report(f"softswitch aggregated packets/s, {NUM_WORKERS} workers on veth ports", rows)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[64, 256], help="lane counts (default 64 256)")
    parser.add_argument("--window", type=int, default=32, help="slots with a round in flight (default 32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window per target and lane count")
    parser.add_argument("--bmv2", choices=["auto", "yes", "no"], default="auto",
                        help="measure simple_switch_grpc: when on PATH (auto), always, never")  # fmt: skip
    args = parser.parse_args(argv)
    run(args.lanes, args.window, args.seconds, args.bmv2)


if __name__ == "__main__":
    main()
