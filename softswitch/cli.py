"""``netagg-softswitch``: run the software switch, with a command line shaped like simple_switch_grpc's.

    netagg-softswitch -i 1@veth1 -i 2@veth3 --grpc-server-addr 127.0.0.1:9559
    netagg-softswitch --udp                      # workers on this machine, no root: UDP 127.0.0.1:48864

The switch starts with no pipeline (it drops everything) until a controller pushes one over P4Runtime.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from netagg.constants import AGG_UDP_PORT, DATAPATH_ENV, DATAPATHS

from .native_pipeline import make_pipeline
from .p4runtime_server import P4RuntimeServer, TlsConfig
from .pipeline import Pipeline
from .ports import (
    DEFAULT_UDP_ADDRESS,
    UDP_PORT_NUMBER,
    AfPacketPorts,
    PortError,
    PortIO,
    UdpPorts,
    parse_port_spec,
    parse_udp_address,
)
from .state import SwitchState
from .switch import SoftSwitch

log = logging.getLogger("netagg.softswitch")

DEFAULT_GRPC_ADDRESS = "127.0.0.1:9559"
DEFAULT_DEVICE_ID = 1
#: How often the main thread checks that the data path is still alive while it waits for a signal.
_WATCH_INTERVAL_S = 1.0


class NoPorts(PortIO):
    """A switch without ports: P4Runtime only (e.g. to test a controller)."""

    def fds(self) -> list[int]:
        return []

    def send(self, port: int, frame: bytes) -> None:
        self.stats.tx_unroutable += 1

    def describe(self) -> str:
        return "no ports"

    def close(self) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    default_udp = f"{DEFAULT_UDP_ADDRESS[0]}:{DEFAULT_UDP_ADDRESS[1]}"
    parser = argparse.ArgumentParser(
        prog="netagg-softswitch",
        description=(
            "netagg's software switch: runs the aggregation pipeline of the netagg P4 program in user space and "
            "serves P4Runtime, so the controller drives it exactly like BMv2's simple_switch_grpc. It starts with "
            "no pipeline and drops every frame until a controller pushes one."
        ),
        epilog=(
            f"UDP mode: with --udp the switch is a UDP endpoint instead of a set of Ethernet ports. Each datagram "
            f"arrives as if on switch port {UDP_PORT_NUMBER}, from its sender's address and port, to the "
            f"aggregation address and UDP port {AGG_UDP_PORT}; RESULTs leaving on port {UDP_PORT_NUMBER} are "
            f"sent to their IPv4 destination and UDP port. Register workers on port {UDP_PORT_NUMBER}."
        ),
    )
    parser.add_argument(
        "-i", "--interface", metavar="PORT@IFACE", action="append", default=[], type=_port_spec,
        help="bind switch port PORT to network interface IFACE with a raw socket (needs root or CAP_NET_RAW); "
        "repeat for every port, as with simple_switch_grpc",
    )  # fmt: skip
    parser.add_argument(
        "--udp", metavar="HOST:PORT", nargs="?", const=default_udp, default=None, type=_udp_address,
        help=f"run as a UDP endpoint on HOST:PORT instead of interfaces (default {default_udp}); no root needed",
    )  # fmt: skip
    parser.add_argument(
        "--datapath", choices=DATAPATHS, default=None,
        help=f"native: the compiled aggregation kernel; python: the reference pipeline (default: ${DATAPATH_ENV}, "
        "else native)",
    )  # fmt: skip
    parser.add_argument(
        "--device-id", metavar="N", type=_positive_int, default=DEFAULT_DEVICE_ID,
        help=f"P4Runtime device id the controller must address (default {DEFAULT_DEVICE_ID})",
    )  # fmt: skip
    parser.add_argument(
        "--grpc-server-addr", metavar="ADDR", default=DEFAULT_GRPC_ADDRESS, type=_grpc_address,
        help=f"where the P4Runtime server listens: HOST:PORT or unix:/path (default {DEFAULT_GRPC_ADDRESS})",
    )  # fmt: skip
    parser.add_argument(
        "--tls-cert", metavar="PEM", type=Path, default=None,
        help="serve P4Runtime over TLS with this certificate chain (needs --tls-key); without TLS, keep the "
        "P4Runtime address reachable only from trusted hosts (docs/security.md)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-key", metavar="PEM", type=Path, default=None, help="the private key of --tls-cert",
    )  # fmt: skip
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", type=Path, default=None,
        help="require client certificates signed by this CA (mutual TLS; needs --tls-cert)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", metavar="N", type=_seed, default=None,
        help="seed of the drop simulator's random numbers (ingress_loss/egress_loss tables), for repeatable "
        "loss patterns; default: a fresh seed each run",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default info)",
    )  # fmt: skip
    return parser


def _port_spec(text: str) -> tuple[int, str]:
    try:
        return parse_port_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _udp_address(text: str) -> tuple[str, int]:
    try:
        return parse_udp_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    """A P4Runtime device id: 1 .. 2**64 - 1 (the field is a uint64)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in 1..{(1 << 64) - 1} (a uint64)")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in 0..{(1 << 32) - 1}")
    return value


def _grpc_address(text: str) -> str:
    if text.startswith("unix:"):
        if len(text) == len("unix:"):
            raise argparse.ArgumentTypeError("unix: address needs a path, e.g. unix:/run/netagg/p4rt.sock")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"gRPC address {text!r} must be HOST:PORT or unix:/path")
    return text


def _ports(args: argparse.Namespace, pipeline: Pipeline) -> PortIO:
    # --datapath chooses the ports' I/O too (native: recvmmsg/sendmmsg in C); without it both follow the environment.
    native = None if args.datapath is None else args.datapath == "native"
    if args.udp is not None:
        return UdpPorts(args.udp, pipeline.agg_source, native=native)
    if args.interface:
        return AfPacketPorts(dict(args.interface), native=native)
    log.warning("no -i PORT@IFACE and no --udp: the switch has no ports and serves P4Runtime only")
    return NoPorts()


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """Run the switch until ``stop`` is set or the data path fails; return the exit status."""
    state = SwitchState()
    try:
        pipeline = make_pipeline(state, seed=args.seed, datapath=args.datapath)
    except ValueError as exc:
        print(f"netagg-softswitch: {exc}", file=sys.stderr)
        return 2
    ports = _ports(args, pipeline)
    try:
        tls = None
        if args.tls_cert is not None:
            tls = TlsConfig.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        server = P4RuntimeServer(state, pipeline, args.device_id, args.grpc_server_addr, tls=tls)
        switch = SoftSwitch(pipeline, ports, server)
    except BaseException:
        ports.close()
        raise
    with switch:
        print(
            f"netagg-softswitch ready: device {args.device_id}, P4Runtime on {server.bound_address}, "
            f"{ports.describe()}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(_WATCH_INTERVAL_S):
            if not switch.is_running():
                log.error("data path stopped: %s", switch.error)
                return 1
    stats = ports.stats
    log.info(
        "stopped: %d frames in, %d out, %d unroutable, %d send errors, %d pipeline errors",
        stats.rx,
        stats.tx,
        stats.tx_unroutable,
        stats.tx_errors,
        pipeline.internal_errors,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.udp is not None and args.interface:
        build_parser().error("--udp and -i are exclusive: UDP mode has exactly one port")
    for index, (port, iface) in enumerate(args.interface):
        for other_port, other_iface in args.interface[:index]:
            if port == other_port:
                build_parser().error(f"argument -i/--interface: port {port} is given more than once")
            if iface == other_iface:
                build_parser().error(
                    f"argument -i/--interface: interface {iface} is given for more than one port "
                    f"({other_port} and {port})"
                )
    if (args.tls_cert is None) != (args.tls_key is None):
        build_parser().error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        build_parser().error("--tls-client-ca needs --tls-cert and --tls-key")
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run(args, stop)
    except (PortError, OSError) as exc:
        print(f"netagg-softswitch: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
