"""``python -m pytest_llamadeploy.sandbox.frontdoor --port P --state-dir D``.

Bounded: stops on SIGTERM/SIGINT, when the sandbox's ``state.json`` has been
gone for a few seconds (the sandbox was torn down or a test's temp dir
removed), and when the ``--exit-with-pid`` process is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ... import metricnames as m
from ..state import SANDBOX_CREDENTIALS, SandboxNotRunning, SandboxState


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llamadeploy.sandbox.frontdoor",
                                     description="API Gateway + Lambda alias routing for the sandbox")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--state-dir", required=True, help="the sandbox state folder (state.json)")
    parser.add_argument("--api-function", default=m.REST_API_NAME)
    parser.add_argument("--ws-function", default=m.WS_API_ID)
    parser.add_argument("--alias", default="live")
    parser.add_argument("--refresh-interval", type=float, default=0.25,
                        help="seconds between alias reads (weights take effect within this + one request)")
    parser.add_argument("--trace-sample", type=float, default=0.05,
                        help="share of requests traced beyond the first per version per second")
    parser.add_argument("--ready-file", help="write {port, pid} here as JSON once listening")
    parser.add_argument("--exit-with-pid", type=int, help="stop when this process is gone")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="frontdoor %(levelname)s %(message)s")
    # uvicorn's sans-io WebSocket protocol logs a refused handshake (our API Gateway-style denial
    # with an HTTP status) as an error; it is the intended answer, not a fault of the front door.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: "returned without completing handshake" not in record.getMessage())

    state_dir = Path(args.state_dir)
    try:
        state = SandboxState.load(state_dir)
    except SandboxNotRunning as exc:
        print(f"frontdoor: {exc}", file=sys.stderr)
        return 2
    if not state.aws_endpoint:
        print(f"frontdoor: {state.path} has no aws_endpoint; start moto first (llamadeploy sandbox up)",
              file=sys.stderr)
        return 2

    import uvicorn

    from ...aws import AwsConfig
    from .app import FrontDoor
    from .routing import Router
    from .telemetry import Telemetry

    # Fail fast against moto: a stuck call must not hold routing or a flush for long.
    aws = AwsConfig(region=state.region or "us-east-1", endpoint_url=state.aws_endpoint, max_attempts=1,
                    credentials=dict(SANDBOX_CREDENTIALS), connect_timeout=2.0, read_timeout=5.0)
    router = Router(aws.client("lambda"), [args.api_function, args.ws_function], alias=args.alias,
                    refresh_interval=args.refresh_interval)
    telemetry = Telemetry({s: aws.client(s) for s in ("cloudwatch", "logs", "xray")}, alias=args.alias,
                          redis_url=state.redis_url, trace_sample=args.trace_sample)
    app = FrontDoor(router, telemetry, args.api_function, args.ws_function)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", args.port))
    except OSError as exc:
        print(f"frontdoor: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}; pick a free port",
              file=sys.stderr)
        return 2
    sock.listen(512)
    port = sock.getsockname()[1]

    config = uvicorn.Config(app, log_level=args.log_level, ws="websockets-sansio", lifespan="on", interface="asgi3",
                            access_log=False, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)

    def watchdog() -> None:
        missing_since: float | None = None
        while not server.should_exit:
            time.sleep(0.5)
            if args.exit_with_pid and not _pid_alive(args.exit_with_pid):
                logging.warning("process %s is gone; stopping", args.exit_with_pid)
                server.should_exit = True
            if (state_dir / "state.json").exists():
                missing_since = None
            elif missing_since is None:
                missing_since = time.monotonic()
            elif time.monotonic() - missing_since > 3.0:
                logging.warning("%s is gone; stopping", state_dir / "state.json")
                server.should_exit = True

    router.start()
    telemetry.start()
    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), "url": f"http://127.0.0.1:{port}"}))
        os.replace(tmp, args.ready_file)
    print(f"frontdoor listening on http://127.0.0.1:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        router.stop()
        telemetry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
