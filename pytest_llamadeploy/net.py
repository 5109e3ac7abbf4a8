"""Loopback sockets for every server the sandbox (and the project's tests) run.

Why TCP_NODELAY everywhere: a keep-alive HTTP answer is written in two or more
``send()`` calls (headers, then body). With Nagle's algorithm on, the second
small segment waits until the first is acknowledged, and the client delays its
ACK (40 ms on Linux) hoping to piggyback it: every keep-alive request then takes
~44 ms on an idle machine. Measured here (bench/bench_keepalive.py, 200 GETs on
one client): a release's service p50 44 ms before, ~1 ms after.

asyncio (and so uvicorn) sets TCP_NODELAY on an accepted connection only when
the *listening* socket's ``proto`` is ``IPPROTO_TCP``; ``socket.socket(AF_INET,
SOCK_STREAM)`` gives proto 0, so the option was silently skipped. Linux also
copies TCP_NODELAY from a listening socket to the connections it accepts, so
setting it on the listener covers servers that never touch accepted sockets.
"""

from __future__ import annotations

import socket
import sys


def nodelay(sock: socket.socket) -> socket.socket:
    """Turn Nagle's algorithm off on a TCP socket (a no-op for anything else); returns the socket."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def tcp_socket() -> socket.socket:
    """An IPv4 TCP socket created with ``IPPROTO_TCP`` (so asyncio recognises it) and no Nagle."""
    return nodelay(socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP))


def free_port() -> int:
    """A port the OS considers free on 127.0.0.1 right now (the caller retries if it loses a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bind_loopback(port: int, who: str) -> socket.socket:
    """A no-delay socket bound to 127.0.0.1:port (0: any free port) for a server to listen on.

    Raises SystemExit(2) with a message naming the port when it is taken, so a
    component started on a lost port race says so instead of a traceback.
    """
    sock = tcp_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        print(f"{who}: cannot listen on 127.0.0.1:{port}: {exc.strerror}; pick another --port (0: any free)",
              file=sys.stderr)
        raise SystemExit(2) from None
    return sock


def port_open(port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
