"""Bare echo loops the benchmarks compare against: what plain Python sockets do with no protocol work at all.

    python -m bench.echo afpacket           # (root) every frame received on any interface goes back out of it
    python -m bench.echo udp 127.0.0.1:0    # every datagram goes back to its sender

Each prints ``ready <address>`` on stdout once its socket is bound, then loops until it is terminated.
"""

from __future__ import annotations

import argparse
import socket
import sys

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: do not hand our own transmissions back to us
PACKET_OUTGOING = 4
BUFFER_BYTES = 4 << 20


def afpacket_echo() -> None:
    """One AF_PACKET socket on every interface of this namespace: receive a frame, send it back where it came from."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # older kernel: the pkttype check below skips our own frames
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
    print("ready afpacket", flush=True)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        frame, addr = recvfrom(65536)
        if addr[2] == PACKET_OUTGOING:
            continue
        sendto(frame, (addr[0], 0))


def udp_echo(host: str, port: int) -> None:
    """One UDP socket: receive a datagram, send it back to its sender."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
    sock.bind((host, port))
    bound_host, bound_port = sock.getsockname()
    print(f"ready {bound_host}:{bound_port}", flush=True)
    buf = bytearray(65536)
    view = memoryview(buf)
    recvfrom_into, sendto = sock.recvfrom_into, sock.sendto
    while True:
        n, addr = recvfrom_into(buf)
        sendto(view[:n], addr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    sub.add_parser("afpacket", help="AF_PACKET echo (root)")
    udp = sub.add_parser("udp", help="UDP echo")
    udp.add_argument("address", help="HOST:PORT to bind (port 0: any free port)")
    args = parser.parse_args(argv)
    try:
        if args.kind == "afpacket":
            afpacket_echo()
        else:
            host, _, port = args.address.rpartition(":")
            udp_echo(host, int(port))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
