"""The software switch benchmark's C load generator (bench/c_generator.c) against the bare C echo on veth ports:
it counts the RESULTs that come back, continues the slots' rounds across runs, and what it puts on the wire is
exactly the Python side's frame templates (netagg/wire.py) with each round's tsi written in.

The frames are captured on the generator's side of the veths with ETH_P_ALL sockets, which see this host's own
transmissions. Needs root (namespaces, AF_PACKET) and gcc; skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import ReadyProcess
from bench.softswitch import NUM_WORKERS, Generator, compile_c, conformance
from netagg.wire import AGG_OFFSET, HEADER_FIELDS, size_for_lanes

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="needs gcc (Debian package gcc) to compile bench/c_generator.c"
)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
LANES, WINDOW, SECONDS = 64, 8, 0.5
_NAMES = [name for name, _ in HEADER_FIELDS]
TSI_AT = AGG_OFFSET + sum(width for _, width in HEADER_FIELDS[: _NAMES.index("tsi")]) // 8


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bench-c")
    return {name: compile_c(name, folder) for name in ("c_generator", "c_echo")}


@pytest.fixture
def echo_ports(binaries: dict[str, Path]) -> Iterator[tuple[dict[int, str], int]]:
    """The C echo behind 4 veth ports: ({port: test-side interface}, the echo's PID)."""
    netns_util, _, _, _ = conformance()
    topology = netns_util.Topology(tag="tg", ports=NUM_WORKERS)
    topology.create()
    try:
        echo = ReadyProcess(
            netns_util.in_namespace(topology.namespace, [str(binaries["c_echo"]), "afpacket"]), "c echo"
        )
        try:
            yield dict(enumerate(topology.test_ifaces, start=1)), echo.pid
        finally:
            echo.stop()
    finally:
        topology.close()


def _make_generator(ifaces: dict[int, str], c_binary: Path) -> Generator:
    _, _, program, _ = conformance()
    ports = sorted(ifaces)
    job = program.Job(
        job=1,
        workers=program.make_workers(1, NUM_WORKERS, ports),
        pool_base=0,
        pool_size=WINDOW,
        size=size_for_lanes(LANES),
        epoch=1,
    )
    return Generator(ifaces, job, LANES, WINDOW, c_binary)


def _capture(ifaces: dict[int, str]) -> dict[int, socket.socket]:
    socks = {}
    for port, iface in ifaces.items():
        # Protocol 0 until bound: nothing from other interfaces (loopback traffic) is captured in between.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((iface, ETH_P_ALL))
        sock.setblocking(False)
        socks[port] = sock
    return socks


def _sent_frames(socks: dict[int, socket.socket]) -> list[tuple[int, bytes]]:
    """(port, frame) of every captured frame this host transmitted."""
    frames = []
    for port, sock in socks.items():
        while True:
            try:
                frame, addr = sock.recvfrom(65536)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                frames.append((port, frame))
    return frames


@pytest.mark.netns
def test_c_generator_counts_results_and_sends_the_python_templates(
    echo_ports: tuple[dict[int, str], int], binaries: dict[str, Path]
) -> None:
    ifaces, echo_pid = echo_ports
    gen = _make_generator(ifaces, binaries["c_generator"])
    capture = _capture(ifaces)
    try:
        first = gen.run("c-echo", echo_pid, SECONDS, "c")
        after_first = list(gen.rnd)
        second = gen.run("c-echo", echo_pid, SECONDS, "c")
        sent = _sent_frames(capture)
    finally:
        for sock in capture.values():
            sock.close()
    for figures in (first, second):
        assert figures.generator == "c"
        assert figures.rounds > 0 and figures.results >= NUM_WORKERS * (figures.rounds - WINDOW), figures
        # The echo answers every UPDATE with itself: nothing unanswered, nothing that fits no outstanding round.
        assert figures.unanswered == 0 and figures.ignored == 0, figures
        assert figures.sent >= figures.results and 0 < figures.generator_cpu <= 1.5, figures
    # Each run starts where the previous one stopped: the next_rounds line came back.
    assert all(r > 0 for r in after_first) and all(b >= a for a, b in zip(after_first, gen.rnd, strict=True))
    assert sum(gen.rnd) - sum(after_first) >= second.rounds
    assert len(sent) >= 2 * NUM_WORKERS * WINDOW, "too few frames captured"
    for port, frame in sent:
        tsi = struct.unpack_from("!I", frame, TSI_AT)[0]
        slot, rnd = tsi % WINDOW, tsi // WINDOW
        expected = bytearray(gen.frames[(port, slot, rnd & 1)])
        struct.pack_into("!I", expected, TSI_AT, tsi)
        assert frame == bytes(expected), f"port {port}, tsi {tsi}: the frame differs from the Python template"
    ports_seen = {port for port, _ in sent}
    assert ports_seen == set(ifaces), ports_seen


@pytest.mark.netns
def test_python_generator_runs_on_the_same_rounds(
    echo_ports: tuple[dict[int, str], int], binaries: dict[str, Path]
) -> None:
    ifaces, echo_pid = echo_ports
    gen = _make_generator(ifaces, binaries["c_generator"])
    by_c = gen.run("c-echo", echo_pid, SECONDS, "c")
    by_python = gen.run("c-echo", echo_pid, SECONDS, "python")
    assert by_python.generator == "python" and by_python.rounds > 0 and by_python.ignored == 0, by_python
    assert by_c.rounds > 0 and by_c.ignored == 0, by_c


@pytest.mark.loopback
def test_c_generator_rejects_bad_input_with_one_line(binaries: dict[str, Path], tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.write_bytes(b"\0" * 1001)  # not a multiple of 2 ports x 2 slots x 2 sets
    base = [str(binaries["c_generator"]), f"--frames={frames}", "--window=2", "--tsi-at=46", "--job-at=45"]
    cases = {
        "needs --frames": [str(binaries["c_generator"]), "lo"],
        "frames file size": [*base, "--job=1", "--seconds=1", "--rounds=0,0", "lo", "lo"],
        "--rounds": [*base, "--job=1", "--seconds=1", "--rounds=0", "lo", "lo"],
        "--job": [*base, "--job=300", "--seconds=1", "--rounds=0,0", "lo", "lo"],
    }
    for message, argv in cases.items():
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
