"""Traffic tools run inside a VM's namespace: TCP/UDP echo servers and clients, raw frames.

    ip netns exec <vm> python -m tests.support.probe serve tcp 22        # "ready", then echoes
    ip netns exec <vm> python -m tests.support.probe connect tcp 10.0.0.6 22   # exit 0: echoed
    ip netns exec <vm> python -m tests.support.probe stream 10.0.0.6 22  # a line out every
                                                                         # 50 ms, each echo printed
    ip netns exec <vm> python -m tests.support.probe send <hex frame>... # out of eth0, as is
    ip netns exec <vm> python -m tests.support.probe sniff 10            # "ready", then a hex
                                                                         # frame per line

tests/support/topology.py's Vm wraps these; run from the repository root (they import nothing
but the standard library).
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003


def serve(proto: str, port: int) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    if proto == "tcp":
        s.listen(16)
    print("ready", flush=True)
    if proto == "udp":
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)
    conns: list[socket.socket] = []
    while True:
        ready, _, _ = select.select([s, *conns], [], [])
        for r in ready:
            if r is s:
                conns.append(s.accept()[0])
                continue
            try:
                data = r.recv(65535)
            except OSError:
                data = b""
            if data:
                r.sendall(data)
            else:
                conns.remove(r)
                r.close()


def connect(proto: str, host: str, port: int, timeout: float, sport: int) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(timeout)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
    try:
        s.connect((host, port))
        s.send(b"hello\n")
        data = s.recv(100)
    except OSError as exc:
        print(f"failed: {exc}", flush=True)
        return 1
    print(f"echoed: {data!r}", flush=True)
    return 0 if data == b"hello\n" else 1


def stream(host: str, port: int, interval: float) -> int:
    s = socket.create_connection((host, port), timeout=5)
    s.setblocking(False)
    print("connected", flush=True)
    n, buf = 0, b""
    next_send = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_send:
            n += 1
            try:
                s.send(f"{n}\n".encode())
            except BlockingIOError:
                pass
            except OSError:
                return 1
            next_send = now + interval
        ready, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
        if ready:
            try:
                data = s.recv(65535)
            except OSError:
                return 1
            if not data:
                return 0
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                print(f"echo {line.decode()}", flush=True)


def send(frames_hex: list[str], iface: str, count: int) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for _ in range(count):
        for frame in frames_hex:
            s.send(bytes.fromhex(frame))
        time.sleep(0.05)


def sniff(seconds: float, iface: str) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.05)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[2] != socket.PACKET_OUTGOING:
            print(data.hex(), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("port", type=int)
    p = sub.add_parser("connect")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--sport", type=int, default=0)
    p = sub.add_parser("stream")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--interval", type=float, default=0.05)
    p = sub.add_parser("send")
    p.add_argument("frames", nargs="+")
    p.add_argument("--iface", default="eth0")
    p.add_argument("--count", type=int, default=1)
    p = sub.add_parser("sniff")
    p.add_argument("seconds", type=float)
    p.add_argument("--iface", default="eth0")
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a.proto, a.port)
    elif a.cmd == "connect":
        return connect(a.proto, a.host, a.port, a.timeout, a.sport)
    elif a.cmd == "stream":
        return stream(a.host, a.port, a.interval)
    elif a.cmd == "send":
        send(a.frames, a.iface, a.count)
    elif a.cmd == "sniff":
        sniff(a.seconds, a.iface)
    return 0


if __name__ == "__main__":
    sys.exit(main())
