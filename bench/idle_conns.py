#!/usr/bin/env python3
"""Memory per idle keep-alive connection, for bench/run.sh.

Opens --count TCP connections to HOST:PORT and holds them idle; reports how much the resident
memory (VmRSS, summed over --pids) of the server grew. With --request, each connection first
sends one HTTP/1.1 request and reads the whole response, so the server has allocated whatever it
keeps for a live keep-alive connection (read/write buffers, per-connection task); without it the
connections are only accepted.

Prints one JSON object on stdout:
  {"count": N, "open_at_end": N, "rss_before_kb": .., "rss_after_kb": .., "delta_kb": ..,
   "bytes_per_conn": .., "kb_per_1k": .., "mode": "request"|"connect"}
Standard library only; loopback only; bounded by --hold and socket timeouts.
"""

import argparse
import json
import resource
import select
import socket
import sys
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def read_response(sock):
    """Reads one HTTP/1.1 response (Content-Length or chunked). Returns the status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(body) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the response body")
            body += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a chunked body")
            body += chunk
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--pids", required=True, help="comma-separated server PIDs to sum VmRSS over")
    parser.add_argument("--request", action="store_true", help="send one request on each connection first")
    parser.add_argument("--path", default="/")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each RSS reading")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds to hold the idle connections")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit("idle_conns.py: loopback only")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    pids = [int(p) for p in args.pids.split(",") if p]
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        + "".join(f"{h}\r\n" for h in args.header)
        + "\r\n"
    ).encode()

    time.sleep(args.settle)
    before = rss_kb(pids)
    sockets = []
    statuses = {}
    for _ in range(args.count):
        sock = socket.create_connection((args.host, args.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if args.request:
            sock.sendall(request)
            status = read_response(sock)
            statuses[status] = statuses.get(status, 0) + 1
        sockets.append(sock)
    time.sleep(args.settle)
    after = rss_kb(pids)
    time.sleep(max(0.0, args.hold - args.settle))

    # A connection the server closed is readable (EOF); an idle open one is not. (poll, not
    # select: select takes no descriptor above 1023.)
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN)
    open_at_end = len(sockets) - len(poller.poll(0))
    after_hold = rss_kb(pids)
    for sock in sockets:
        sock.close()

    delta = after - before
    print(
        json.dumps(
            {
                "mode": "request" if args.request else "connect",
                "count": args.count,
                "open_at_end": open_at_end,
                "statuses": {str(k): v for k, v in statuses.items()},
                "rss_before_kb": before,
                "rss_after_kb": after,
                "rss_after_hold_kb": after_hold,
                "delta_kb": delta,
                "bytes_per_conn": round(delta * 1024 / args.count),
                "kb_per_1k": round(delta * 1000 / args.count),
            }
        )
    )


if __name__ == "__main__":
    main()
