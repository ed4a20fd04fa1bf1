"""Software switch packets/s for 4 workers, as ratios to bare echo loops and to BMv2 in the same run.

The softswitch runs twice, on its native data path and on the Python reference (``softswitch-python``). The
baselines: ``echo``, a bare Python AF_PACKET echo (bench/echo.py), and ``c-echo``, a bare C loop on the same
ports (bench/c_echo.c: recvmmsg / sendmmsg, compiled with gcc into a temporary folder), the machine's limit.
Goals: >= 1.5x the Python echo's aggregated packets/s, >= 0.5x the C echo's, >= 4x BMv2's. Every run is printed;
the ratios are computed per round (targets measured one after the other) and given as median and range.
Needs root (namespaces, veth, AF_PACKET).

Workload: the target (echo, softswitch, BMv2) runs in a namespace of its own behind 4 veth ports; a load
generator plays 4 workers on the other ends. It sends pre-built UPDATE frames for 4 workers (one per port, each its
own IPv4 address and UDP source port) on a window of slots, round after round, and counts the RESULTs (for the
echo: the frames coming back). A slot starts its next round only when all 4 RESULTs of the previous one arrived
(closed loop), so the offered load is bounded by the window and loss cannot inflate the count; a round still
missing RESULTs after a timeout has the missing workers' UPDATEs resent (counted as loss).

Two generators run that same loop: ``c`` (the default), bench/c_generator.c compiled with gcc into a temporary
folder, moving frames in bursts with recvmmsg/sendmmsg; and ``python``, the loop in this file, one system call a
frame. The Python one costs more per frame than the faster targets and then measures itself rather than them
(``--generator c python`` runs both and gives the ratios for each). Either way the frames are built here, from
netagg/wire.py; the C program receives them as a file and only writes each round's tsi into them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from bench.common import cpu_model, report
from bench.procs import REPO, ReadyProcess
from netagg import artifacts
from netagg.constants import DATAPATH_ENV, LANE_BYTES, MsgType
from netagg.wire import AGG_OFFSET, HEADER_FIELDS, pack_header, size_for_lanes

#: The committed pipeline every target is programmed with.
P4INFO, BMV2_JSON = artifacts.P4INFO, artifacts.BMV2_JSON
NUM_WORKERS = 4
ETH_P_IP = 0x0800
SOCKET_BUFFER_BYTES = 4 << 20
#: A round missing RESULTs this long has the missing workers' UPDATEs resent.
RETRANSMIT_S = 0.5
WARMUP_S = 0.5
DRAIN_S = 2.0
#: The load generators: bench/c_generator.c, and the loop of ``Generator._run_python``.
GENERATORS = ("c", "python")
#: Time the C generator may take beyond its warm-up, timed window and drain (start-up, exit).
C_GENERATOR_SLACK_S = 10.0
_FIELD_NAMES = [name for name, _ in HEADER_FIELDS]


def _field_byte(name: str) -> int:
    """Byte offset of a byte-aligned header field, from the one description of the header."""
    return sum(width for _, width in HEADER_FIELDS[: _FIELD_NAMES.index(name)]) // 8


_JOB_AT = AGG_OFFSET + _field_byte("job")
_TSI_AT = AGG_OFFSET + _field_byte("tsi")
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
    """One target at one lane count, driven by one generator."""

    target: str
    lanes: int
    generator: str  # "c" or "python" (GENERATORS)
    seconds: float
    results: int  # RESULT frames received in the timed window
    rounds: int  # rounds completed in the timed window
    sent: int  # UPDATE frames sent, whole run
    resent: int  # of those, retransmissions
    unanswered: int  # RESULTs still missing when the run ended
    ignored: int  # frames received that answer no outstanding UPDATE (duplicates, late answers), whole run
    #: CPU seconds of this process per wall second in the timed window (1.0: one core busy).
    generator_cpu: float
    #: The same for the target process (all its threads); near 1.0 or above: the target is the bottleneck.
    target_cpu: float

    @property
    def pps(self) -> float:
        return self.results / self.seconds

    @property
    def loss(self) -> float:
        return self.resent / self.sent if self.sent else 0.0


class Generator:
    """Closed-loop UPDATE generator on the test ends of the ports (one worker per port).

    It holds the frames and each slot's round (the switch remembers a slot's last round, so both generators
    continue from where the previous run stopped); ``run`` drives them with the C program or the Python loop.
    """

    def __init__(
        self, ifaces: dict[int, str], job: object, lanes: int, window: int, c_binary: Path | None = None
    ) -> None:
        self.window = window
        self.lanes = lanes
        self.size = size_for_lanes(lanes)
        self.job = job
        self.c_binary = c_binary
        workers = list(job.workers)  # type: ignore[attr-defined]
        if sorted(w.port for w in workers) != sorted(ifaces):
            raise ValueError("the generator needs exactly one worker per port")
        self.ports = sorted(ifaces)
        self.ifaces = ifaces
        self.rnd = [0] * window
        self.frames = build_frames(job, lanes, window)
        self.socks: dict[int, socket.socket] = {}  # the Python loop's, while it runs

    def write_frames(self, path: Path) -> None:
        """The frames as the C generator reads them: all of one size, in (port, slot, set) order."""
        with path.open("wb") as out:
            for port in self.ports:
                for slot in range(self.window):
                    for set_bit in (0, 1):
                        out.write(self.frames[(port, slot, set_bit)])

    def run(self, target: str, target_pid: int, seconds: float, generator: str = "c") -> Figures:
        """Warm up, count for ``seconds``, then stop issuing rounds and wait for what is in flight."""
        if generator == "c":
            return self._run_c(target, target_pid, seconds)
        if generator == "python":
            return self._run_python(target, target_pid, seconds)
        raise ValueError(f"generator {generator!r}: choose from {', '.join(GENERATORS)}")

    def _run_c(self, target: str, target_pid: int, seconds: float) -> Figures:
        if self.c_binary is None:
            raise RuntimeError("c generator: not compiled (compile_c_generator)")
        with tempfile.TemporaryDirectory(prefix="netagg-gen-") as folder:
            frames = Path(folder) / "frames"
            self.write_frames(frames)
            argv = [
                str(self.c_binary),
                f"--frames={frames}",
                f"--window={self.window}",
                f"--tsi-at={_TSI_AT}",
                f"--job-at={_JOB_AT}",
                f"--job={self.job.job}",  # type: ignore[attr-defined]
                f"--seconds={seconds}",
                f"--warmup={WARMUP_S}",
                f"--retransmit={RETRANSMIT_S}",
                f"--drain={DRAIN_S}",
                "--rounds=" + ",".join(map(str, self.rnd)),
                *(self.ifaces[port] for port in self.ports),
            ]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + WARMUP_S + seconds + DRAIN_S + C_GENERATOR_SLACK_S
                lines = _lines(proc, deadline)
                _expect(next(lines, ""), "counting", proc)
                target_start = process_cpu(target_pid)
                _expect(next(lines, ""), "stopped", proc)
                target_cpu = process_cpu(target_pid) - target_start
                result = next(lines, "")
                _expect(result, "result", proc)
                proc.wait(max(deadline - time.monotonic(), 0.1))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
        if proc.returncode != 0:
            raise RuntimeError(f"c generator exited with status {proc.returncode}")
        counts = dict(item.split("=", 1) for item in result.split()[1:])
        self.rnd = [int(r) for r in counts["next_rounds"].split(",")]
        elapsed = float(counts["seconds"])
        return Figures(
            target=target,
            lanes=self.lanes,
            generator="c",
            seconds=elapsed,
            results=int(counts["results"]),
            rounds=int(counts["rounds"]),
            sent=int(counts["sent"]),
            resent=int(counts["resent"]),
            unanswered=int(counts["unanswered"]),
            ignored=int(counts["ignored"]),
            generator_cpu=float(counts["cpu"]) / elapsed,
            target_cpu=target_cpu / elapsed,
        )

    def _run_python(self, target: str, target_pid: int, seconds: float) -> Figures:
        with ExitStack() as stack:
            # Sockets open only while this generator runs: open ones would queue a copy of every frame the
            # other generator's run receives.
            self.socks = open_port_sockets(self.ifaces, stack)
            try:
                return self._python_loop(target, target_pid, seconds)
            finally:
                self.socks = {}

    def _drain(self) -> int:
        """Discard what is queued (late answers of an earlier run); how many frames."""
        count = 0
        for sock in self.socks.values():
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    break
                count += 1
        return count

    def _send(self, port: int, slot: int, tsi: int, set_bit: int) -> None:
        frame = self.frames[(port, slot, set_bit)]
        _TSI.pack_into(frame, _TSI_AT, tsi)
        self.socks[port].send(frame)

    def _python_loop(self, target: str, target_pid: int, seconds: float) -> Figures:
        window, ports = self.window, self.ports
        full = (1 << len(ports)) - 1
        bit = {port: 1 << i for i, port in enumerate(ports)}
        rnd = self.rnd  # kept across runs: the switch remembers each slot's last round
        missing = [0] * window
        sent_at = [0.0] * window
        sent = resent = 0
        ignored = self._drain()
        job_id = self.job.job  # type: ignore[attr-defined]
        results = rounds = 0
        by_fd = {sock.fileno(): (port, sock) for port, sock in self.socks.items()}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        buf = bytearray(65536)
        unpack_tsi = _TSI.unpack_from

        frames, socks, pack_tsi = self.frames, self.socks, _TSI.pack_into

        def start_round(slot: int) -> None:
            nonlocal sent
            tsi = (rnd[slot] * window + slot) & 0xFFFFFFFF
            set_bit = rnd[slot] & 1
            for port in ports:  # _send, inlined: this is the generator's hot path
                frame = frames[(port, slot, set_bit)]
                pack_tsi(frame, _TSI_AT, tsi)
                socks[port].send(frame)
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
                cpu_start, target_start = time.process_time(), process_cpu(target_pid)
            if issuing and now >= t_stop:
                issuing, counting = False, False
                measured = (
                    results,
                    rounds,
                    now - t_start,
                    time.process_time() - cpu_start,
                    process_cpu(target_pid) - target_start,
                )
                drain_end = now + DRAIN_S
            if not issuing and (not any(missing) or now >= drain_end):
                break
            for fd, _ in poller.poll(20):
                port, sock = by_fd[fd]
                pbit = bit[port]
                while True:
                    try:
                        n = sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    # (An ETH_P_IP socket never sees this host's own transmissions: no packet type check.)
                    if n < _TSI_AT + 4 or buf[_JOB_AT] != job_id:
                        ignored += 1
                        continue
                    tsi = unpack_tsi(buf, _TSI_AT)[0]
                    slot = tsi % window
                    if tsi != (rnd[slot] * window + slot) & 0xFFFFFFFF or not missing[slot] & pbit:
                        ignored += 1  # a duplicate, or a RESULT of an earlier round
                        continue
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
        got, done, elapsed, cpu, target_cpu = measured
        unanswered = sum(m.bit_count() for m in missing)
        return Figures(
            target=target,
            lanes=self.lanes,
            generator="python",
            seconds=elapsed,
            results=got,
            rounds=done,
            sent=sent,
            resent=resent,
            unanswered=unanswered,
            ignored=ignored,
            generator_cpu=cpu / elapsed,
            target_cpu=target_cpu / elapsed,
        )


def build_frames(job: object, lanes: int, window: int) -> dict[tuple[int, int, int], bytearray]:
    """One UPDATE frame per (port, slot, set) of ``job``'s workers (one per port), with tsi 0.

    A send only writes the round's tsi into it (a generator must cost far less per packet than any target).
    The UDP checksum is 0 ("none" in IPv4), so rewriting the tsi cannot make it wrong.
    """
    rng = np.random.default_rng(lanes)
    size = size_for_lanes(lanes)
    frames: dict[tuple[int, int, int], bytearray] = {}
    for w in job.workers:  # type: ignore[attr-defined]
        values = rng.integers(-1000, 1000, size=lanes, dtype=np.int32)
        for slot in range(window):
            for set_bit in (0, 1):
                frame = bytearray(_update_frame(w, job, slot, values))
                frame[_UDP_CHECKSUM:AGG_OFFSET] = b"\0\0"
                pack_header(
                    frame,
                    AGG_OFFSET,
                    msg_type=MsgType.UPDATE,
                    size=size,
                    job=job.job,  # type: ignore[attr-defined]
                    tsi=0,
                    slot=slot,
                    set=set_bit,
                    exp=0,
                    key=w.key,
                    op=0,  # one collective: the same for every worker
                )
                frames[(w.port, slot, set_bit)] = frame
    return frames


def _lines(proc: subprocess.Popen[bytes], deadline: float) -> Iterator[str]:
    """``proc``'s stdout line by line; TimeoutError when a line has not come by ``deadline``."""
    assert proc.stdout is not None
    fd, pending = proc.stdout.fileno(), b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("c generator: no output line in time")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            pending += chunk


def _expect(line: str, word: str, proc: subprocess.Popen[bytes]) -> None:
    """RuntimeError with the program's complaint unless ``line`` starts with ``word``."""
    if line.split(" ", 1)[0] != word:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        raise RuntimeError(f"c generator: expected {word!r}, got {line!r}: {err or 'no message'}")


def open_port_sockets(ifaces: dict[int, str], stack: ExitStack) -> dict[int, socket.socket]:
    """One non-blocking AF_PACKET socket per port on its test-side interface (closed by ``stack``)."""
    socks: dict[int, socket.socket] = {}
    for port, iface in sorted(ifaces.items()):
        # ETH_P_IP, not ETH_P_ALL: the kernel hands our own transmissions only to ETH_P_ALL taps. Protocol 0
        # until bound: the socket receives nothing from other interfaces (loopback traffic included) in between.
        sock = stack.enter_context(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        sock.bind((iface, ETH_P_IP))
        sock.setblocking(False)
        socks[port] = sock
    return socks


def _update_frame(worker: object, job: object, slot: int, values: np.ndarray) -> bytes:
    from tests.conformance.frames import update_frame
    from tests.conformance.program import AGG

    return update_frame(worker.endpoint, AGG, job=job.job, tsi=slot, slot=slot, set=0, lanes=values, key=worker.key)  # type: ignore[attr-defined]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _echo_target(namespace: str, netns_util: ModuleType, argv: list[str]) -> Iterator[int]:
    proc = ReadyProcess(netns_util.in_namespace(namespace, argv), "AF_PACKET echo")
    try:
        yield proc.pid  # `ip netns exec` execs the program: this is the echo's own PID
    finally:
        proc.stop()


def compile_c(name: str, workdir: Path) -> Path:
    """bench/``name``.c compiled into ``workdir``; RuntimeError naming the compiler's complaint."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError(f"{name}: gcc not found (Debian package gcc)")
    binary = workdir / name
    done = subprocess.run(
        [gcc, "-O2", "-o", str(binary), str(REPO / "bench" / f"{name}.c")], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name}: gcc failed: {done.stderr.strip()}")
    return binary


def compile_c_echo(workdir: Path) -> Path:
    """bench/c_echo.c compiled into ``workdir``."""
    return compile_c("c_echo", workdir)


def compile_c_generator(workdir: Path) -> Path:
    """bench/c_generator.c compiled into ``workdir``."""
    return compile_c("c_generator", workdir)


def machine() -> str:
    """CPU model, cores and kernel, for the report."""
    model = cpu_model() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def _start_target(
    name: str, topology: object, workdir: Path, stack: ExitStack, mods: tuple[ModuleType, ...]
) -> tuple[int, object | None]:
    """Start ``name`` in ``topology``'s namespace (cleanup pushed on ``stack``); (its PID, its P4Runtime session)."""
    netns_util, targets, program, p4rt = mods
    if name in ("echo", "c-echo"):
        argv = (
            [sys.executable, "-m", "bench.echo", "afpacket"]
            if name == "echo"
            else [str(compile_c_echo(workdir)), "afpacket"]
        )
        pid = stack.enter_context(_echo_target(topology.namespace, netns_util, argv))  # type: ignore[attr-defined]
        return pid, None
    target_name, _, datapath = name.partition("-")  # softswitch-python: the reference data path
    target = targets.Target(target_name)
    reason = target.unavailable_reason()
    if reason:
        raise RuntimeError(f"{name}: {reason}")
    switch_ifaces = dict(enumerate(topology.switch_ifaces, start=1))  # type: ignore[attr-defined]
    proc = targets.TargetProcess(target, topology.namespace, switch_ifaces, workdir)  # type: ignore[attr-defined]
    saved = os.environ.get(DATAPATH_ENV)
    os.environ[DATAPATH_ENV] = datapath or "native"  # the target process inherits it
    try:
        proc.start()
    finally:
        if saved is None:
            del os.environ[DATAPATH_ENV]
        else:
            os.environ[DATAPATH_ENV] = saved
    stack.callback(proc.stop)
    session = p4rt.P4RuntimeSession(proc.grpc_addr, P4INFO, BMV2_JSON, targets.DEVICE_ID)
    session.open()
    stack.callback(session.close)
    stack.callback(session.delete_multicast_groups)  # BMv2 keeps them across pipeline pushes
    session.modify([program.agg_addr_entry()])
    assert proc.pid is not None
    return proc.pid, session


def measure(
    lane_counts: list[int],
    window: int,
    seconds: float,
    repeat: int,
    with_bmv2: bool,
    generators: tuple[str, ...] = ("c",),
) -> dict[tuple[str, int, str], list[Figures]]:
    """``repeat`` runs of every target at every lane count with every generator, in round order.

    Every target runs at once, each in a namespace of its own (an idle target blocks in the kernel), and the
    generators visit them in turn, ``repeat`` times: a load spike from elsewhere on the machine then hits one
    short run, not one target's whole measurement.
    """
    mods = conformance()
    netns_util, _, program, _ = mods
    names = TARGETS + (["bmv2"] if with_bmv2 else [])
    tags = {"echo": "be", "c-echo": "bc", "softswitch": "bs", "softswitch-python": "bp", "bmv2": "bb"}
    port_numbers = list(range(1, NUM_WORKERS + 1))
    runs: dict[tuple[str, int, str], list[Figures]] = {}
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="netagg-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        c_binary = compile_c_generator(workdir) if "c" in generators else None
        loads: dict[tuple[str, int], Generator] = {}
        pids: dict[str, int] = {}
        for name in names:
            topology = netns_util.Topology(tag=tags[name], ports=NUM_WORKERS)
            topology.create()
            stack.callback(topology.close)
            target_dir = workdir / name
            target_dir.mkdir()
            pid, session = _start_target(name, topology, target_dir, stack, mods)
            pids[name] = pid
            ifaces = dict(zip(port_numbers, topology.test_ifaces, strict=True))
            for i, lanes in enumerate(lane_counts):
                job = program.Job(
                    job=i + 1,
                    workers=program.make_workers(i + 1, NUM_WORKERS, port_numbers),
                    pool_base=i * window,
                    pool_size=window,
                    size=size_for_lanes(lanes),
                    epoch=1,
                )
                if session is not None:
                    session.insert(program.worker_entries(job) + program.result_entries(job) + [program.job_group(job)])
                loads[(name, lanes)] = Generator(ifaces, job, lanes, window, c_binary)
        for r in range(repeat):
            for (name, lanes), gen in loads.items():
                for kind in generators:
                    figures = gen.run(name, pids[name], seconds, kind)
                    print(
                        f"  run {r + 1}/{repeat}: {name} {lanes} lanes, {kind} generator: {figures.pps:,.0f} "
                        f"RESULTs/s, loss {figures.loss:.2%}, CPU: generator {figures.generator_cpu:.2f}, "
                        f"{name} {figures.target_cpu:.2f}",
                        flush=True,
                    )
                    runs.setdefault((name, lanes, kind), []).append(figures)
    return runs


#: The targets every run measures (BMv2 joins when present).
TARGETS = ["echo", "c-echo", "softswitch", "softswitch-python"]


def spread(values: list[float], digits: int = 2) -> str:
    """Median and range of ``values``."""
    return f"{statistics.median(values):.{digits}f} (range {min(values):.{digits}f}-{max(values):.{digits}f})"


def run(
    lane_counts: list[int] | None = None,
    window: int = 32,
    seconds: float = 3.0,
    repeat: int = 3,
    bmv2: str = "auto",
    generators: tuple[str, ...] = ("c",),
) -> list[Figures] | None:
    """Measure and print; None (after printing why) when it cannot run here."""
    lane_counts = lane_counts or [64, 256]
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown or not generators:
        raise ValueError(f"generators {list(generators)}: choose one or more of {', '.join(GENERATORS)}")
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
    print(
        f"measuring ({NUM_WORKERS} workers, window {window} slots, {repeat} rounds of {seconds:g} s per target, "
        f"generator {' and '.join(generators)})",
        flush=True,
    )
    load_before = os.getloadavg()
    runs = measure(lane_counts, window, seconds, repeat, with_bmv2, generators)
    figures = [max(fs, key=lambda f: f.pps) for fs in runs.values()]
    rows: list[tuple[str, str]] = []
    for (name, lanes, kind), fs in runs.items():
        best = max(fs, key=lambda f: f.pps)
        rows.append(
            (
                f"{name}, {lanes} lanes, {kind} generator",
                (
                    f"{spread([f.pps for f in fs], 0)} RESULTs/s over {len(fs)} runs; best: "
                    f"{best.pps * LANE_BYTES * best.lanes / 1e6:.1f} MB/s of lanes, loss {best.loss:.2%}, "
                    f"unanswered {best.unanswered}, ignored {best.ignored}; CPU: generator {best.generator_cpu:.2f}, "
                    f"target {best.target_cpu:.2f}"
                ),
            )
        )

    def ratios(a: str, b: str, lanes: int, kind: str, kind_b: str | None = None) -> list[float]:
        """``a`` / ``b`` per round (each pair measured one after the other)."""
        pairs = zip(runs[(a, lanes, kind)], runs[(b, lanes, kind_b or kind)], strict=True)
        return [x.pps / y.pps for x, y in pairs]

    for kind in generators:
        for lanes in lane_counts:
            at = f"{lanes} lanes, {kind} generator"
            rows.append(
                (f"softswitch / echo, {at}", f"{spread(ratios('softswitch', 'echo', lanes, kind))}  (goal >= 1.5)")
            )
            rows.append(
                (f"softswitch / C echo, {at}", f"{spread(ratios('softswitch', 'c-echo', lanes, kind))}  (goal >= 0.5)")
            )
            rows.append(
                (f"softswitch native / python, {at}", spread(ratios("softswitch", "softswitch-python", lanes, kind)))
            )
            rows.append((f"Python echo / C echo, {at}", spread(ratios("echo", "c-echo", lanes, kind))))
            if ("bmv2", lanes, kind) in runs:
                rows.append(
                    (f"softswitch / BMv2, {at}", f"{spread(ratios('softswitch', 'bmv2', lanes, kind))}  (goal >= 4)")
                )
    if len(generators) > 1:
        # How much a target's figure owes to the generator: near 1, the target is the limit.
        for name, lanes, kind in runs:
            if kind == "c":
                rows.append(
                    (f"{name}, {lanes} lanes: c / python generator", spread(ratios(name, name, lanes, "c", "python")))
                )
    if not with_bmv2:
        rows.append(("BMv2", f"not measured: {bmv2_reason or 'disabled (--bmv2 no)'}"))
    rows.append(("machine", machine()))
    rows.append(("load average", "before " + " ".join(f"{x:.2f}" for x in load_before) + ", after "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg())))  # fmt: skip

    report(f"softswitch aggregated packets/s, {NUM_WORKERS} workers on veth ports", rows)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[64, 256], help="lane counts (default 64 256)")
    parser.add_argument("--window", type=int, default=32, help="slots with a round in flight (default 32)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window of one run (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per target and lane count (default 3)")
    parser.add_argument(
        "--bmv2",
        choices=["auto", "yes", "no"],
        default="auto",
        help="measure simple_switch_grpc: when on PATH (auto), always, never",
    )
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        nargs="+",
        default=["c"],
        help="load generator(s): c (bench/c_generator.c, the default) and/or python (this file's loop); "
        "with both, every target is measured with each and the ratios are given for each",
    )
    args = parser.parse_args(argv)
    run(args.lanes, args.window, args.seconds, args.repeat, args.bmv2, tuple(dict.fromkeys(args.generator)))


if __name__ == "__main__":
    main()
