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
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ...net import bind_loopback
from ...procs import pid_alive
from ..state import SANDBOX_CREDENTIALS, SandboxNotRunning, SandboxState
from ..supervisor import freeze_startup_heap

#: Seconds from the stop request to a forced exit (the supervisor's SIGKILL comes at 10 s).
STOP_DEADLINE = 6.0


def _say(message: str) -> None:
    print(f"frontdoor {time.strftime('%H:%M:%S')} {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llamadeploy.sandbox.frontdoor",
                                     description="API Gateway + Lambda alias routing for the sandbox")
    parser.add_argument("--port", type=int, required=True,
                        help="port of the live stage on 127.0.0.1 (0: any free port)")
    parser.add_argument("--preview-port", type=int, default=0, help="port of the preview stage (0: any free port)")
    parser.add_argument("--lambda-port", type=int, default=0, help="port of Lambda's Invoke API (0: any free port)")
    parser.add_argument("--state-dir", required=True, help="the sandbox state folder (state.json)")
    parser.add_argument("--api-function", default="onchain-api")
    parser.add_argument("--ws-function", default="onchain-ws")
    parser.add_argument("--alias", default="live", help="the alias the live stage calls")
    parser.add_argument("--preview-alias", default="preview", help="the alias the preview stage calls")
    # 1 s: an UpdateAlias reaches traffic within about a second, as on AWS, for 2 GetAlias calls a
    # second; 0.25 s cost moto and the front door 8 calls a second, a third of the idle sandbox's CPU.
    parser.add_argument("--refresh-interval", type=float, default=1.0,
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
    from ..physics import physics
    from .app import FrontDoor, StageRoute
    from .routing import Router
    from .telemetry import ApiNames, Telemetry

    # Fail fast against moto: a stuck call must not hold routing or a flush for long.
    aws = AwsConfig(region=state.region or "us-east-1", endpoint_url=state.aws_endpoint, max_attempts=1,
                    credentials=dict(SANDBOX_CREDENTIALS), connect_timeout=2.0, read_timeout=5.0)
    names = state.extra.get("names") or {}
    chosen = state.extra.get("physics") or {}
    router = Router(aws.client("lambda"), [args.api_function, args.ws_function],
                    aliases=(args.alias, args.preview_alias), refresh_interval=args.refresh_interval)
    # The flush thread's calls carry what this process built itself: botocore's parameter validation
    # and gzip of each PutMetricData (which moto then inflates) were a quarter of its CPU (bench/IDLE.md).
    telemetry = Telemetry({s: aws.client(s, parameter_validation=False, disable_request_compression=True)
                           for s in ("cloudwatch", "logs", "xray")},
                          names=ApiNames(**{k: v for k, v in names.items() if k in ApiNames.__dataclass_fields__}),
                          physics=physics(chosen.get("name", "fast"), chosen.get("metric_lag")),
                          redis_url=state.redis_url, trace_sample=args.trace_sample, state_dir=state_dir)

    socks = {role: bind_loopback(port, f"frontdoor ({role})")
             for role, port in (("live", args.port), ("preview", args.preview_port), ("lambda", args.lambda_port))}
    ports = {role: sock.getsockname()[1] for role, sock in socks.items()}
    for sock in socks.values():
        sock.listen(512)
    port = ports["live"]
    app = FrontDoor(router, telemetry, args.api_function, args.ws_function,
                    stages={ports["live"]: StageRoute(names.get("rest_stage", "live"), args.alias),
                            ports["preview"]: StageRoute(names.get("preview_stage", "preview"), args.preview_alias)},
                    lambda_port=ports["lambda"], aws_endpoint=state.aws_endpoint)

    # uvloop and httptools: the C event loop and HTTP parser (bench/FRONTDOOR.md); no permessage-deflate,
    # as API Gateway's WebSocket APIs offer none (and compressing every relayed event twice cost CPU).
    config = uvicorn.Config(app, log_level=args.log_level, ws="websockets-sansio", lifespan="on", interface="asgi3",
                            access_log=False, timeout_graceful_shutdown=3, loop="uvloop", http="httptools",
                            ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    freeze_startup_heap()

    def watchdog() -> None:
        missing_since: float | None = None
        while not server.should_exit:
            time.sleep(0.5)
            if args.exit_with_pid and not pid_alive(args.exit_with_pid):
                logging.warning("process %s is gone; stopping", args.exit_with_pid)
                server.should_exit = True
            if (state_dir / "state.json").exists():
                missing_since = None
            elif missing_since is None:
                missing_since = time.monotonic()
            elif time.monotonic() - missing_since > 3.0:
                logging.warning("%s is gone; stopping", state_dir / "state.json")
                server.should_exit = True
        # Stopping is bounded whatever holds it up (a WebSocket close handshake, a slow moto call
        # in a worker thread): the supervisor SIGKILLs after 10 s, so give up well before that.
        _say(f"stopping (pid {os.getpid()})")
        time.sleep(STOP_DEADLINE)
        _say(f"still stopping after {STOP_DEADLINE:.0f}s; exiting now")
        os._exit(1)

    router.start()
    telemetry.start()
    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), "url": f"http://127.0.0.1:{port}",
                                   "preview_port": ports["preview"], "lambda_port": ports["lambda"]}))
        os.replace(tmp, args.ready_file)
    _say(f"listening: live stage http://127.0.0.1:{port}, preview stage http://127.0.0.1:{ports['preview']}, "
         f"Lambda API http://127.0.0.1:{ports['lambda']} (pid {os.getpid()}; {telemetry.physics.describe()})")
    # uvicorn re-raises a captured SIGTERM once it has shut down, with the handler it found
    # installed: with the default one the process died there, before the last telemetry flush.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)
    code = 1
    try:
        server.run(sockets=list(socks.values()))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        router.stop()
        telemetry.stop()
        _say(f"stopped (pid {os.getpid()}, exit code {code})")
        # Skip the interpreter's teardown (garbage collection, non-daemon thread joins): nothing
        # is left to save, and on a loaded machine it took seconds.
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
