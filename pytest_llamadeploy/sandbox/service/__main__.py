"""``python -m pytest_llamadeploy.sandbox.service --release R --port P --state-dir D [--fault K=V ...]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from ...net import bind_loopback
from ..state import SandboxNotRunning, SandboxState
from ..supervisor import freeze_startup_heap
from .faults import KNOBS, parse_faults

READY = "llamadeploy-service ready"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pytest_llamadeploy.sandbox.service",
                                     description="The sandbox's reference On-Chain service (one release).")
    parser.add_argument("--release", required=True)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--fault", action="append", default=[], metavar="KNOB=VALUE",
                        help=f"knobs: {', '.join(KNOBS)}")
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        faults = parse_faults(args.fault)
    except ValueError as exc:
        print(f"error: --fault: {exc}", file=sys.stderr)
        return 2
    try:
        state = SandboxState.load(args.state_dir)
    except SandboxNotRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [k for k in ("postgres_dsn", "redis_url") if not getattr(state, k)]
    if missing:
        print(f"error: {state.path} has no {', '.join(missing)}; the sandbox must start PostgreSQL and Redis first",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s {args.release} %(levelname)s %(message)s")

    import uvicorn

    from .app import ServiceConfig, create_app

    config = ServiceConfig(release=args.release, state_dir=state.directory, postgres_dsn=state.postgres_dsn,
                           redis_url=state.redis_url, aws_endpoint=state.aws_endpoint, region=state.region or "us-east-1",
                           sqs_queue_url=state.sqs_queue_url,
                           alerts_topic_arn=str(state.extra.get("alerts_topic_arn", "")), faults=faults)
    sock = bind_loopback(args.port, f"service {args.release}")
    port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM after shutting down (exit -15); a clean stop here is exit 0.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop)
            try:
                yield
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

        def _stop(self) -> None:
            self.force_exit = self.should_exit
            self.should_exit = True

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"{READY} release={args.release} url=http://127.0.0.1:{port} pid={os.getpid()}", flush=True)

    # uvloop and httptools (C loop and parser) and no permessage-deflate, as the front door: one release
    # serves the performance suite's whole load, and the sandbox must time the release, not itself.
    server = Server(uvicorn.Config(create_app(config), log_level=args.log_level, access_log=False,
                                   lifespan="on", timeout_graceful_shutdown=3, ws_ping_interval=20,
                                   loop="uvloop", http="httptools", ws_per_message_deflate=False))
    freeze_startup_heap()
    # Server.run, not asyncio.run(server.serve()): only run() builds the loop from config.loop;
    # asyncio.run gave the service asyncio's pure-Python loop (bench/IDLE.md).
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
