"""The sandbox's Redis: the installed ``redis-server`` on 127.0.0.1, no persistence."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..net import free_port
from .supervisor import SandboxError, child_env, spawn, wait_until

INSTALL_HINT = "install it with `apt-get install -y redis-server` (the project's setup script does this)"


@dataclass(frozen=True)
class RedisInfo:
    pid: int
    port: int
    cmd: list[str]
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def component(self) -> dict[str, object]:
        return {"pid": self.pid, "port": self.port, "cmd": self.cmd, "log": str(self.log_path),
                "markers": ["redis-server", f"127.0.0.1:{self.port}"]}


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise SandboxError(f"redis-server is not on PATH; {INSTALL_HINT}")
    return path


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when Redis on 127.0.0.1:port answers PING (a raw RESP round trip: no client import)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start(state_dir: Path, timeout: float = 20.0) -> RedisInfo:
    binary = find_redis_server()
    log_path = state_dir / "logs" / "redis.log"
    last_error: SandboxError | None = None
    for _attempt in range(3):
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(state_dir), "--protected-mode", "yes"]
        proc = spawn(argv, log_path, child_env(state_dir))
        try:
            wait_until(partial(ping, port), timeout, f"redis-server on 127.0.0.1:{port}", proc=proc,
                       log_path=log_path)
        except SandboxError as exc:
            # Lost the port to someone else between free_port() and bind: try another one.
            last_error = exc
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            continue
        return RedisInfo(pid=proc.pid, port=port, cmd=argv, log_path=log_path)
    raise SandboxError(f"redis: could not start: {last_error}")
