"""The sandbox's moto process: ``python -m pytest_llamadeploy.sandbox.moto_server --port P --state-dir D``.

moto's server on 127.0.0.1 plus what moto lacks (``moto_ext``: percentiles,
alarm evaluation). Runs until SIGTERM/SIGINT, then shuts the server down.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

#: Backends the sandbox provisions at ``up``. moto imports a backend on its first request, and
#: rds and cloudformation take seconds to import: importing them while PostgreSQL initialises
#: takes that off ``up``'s critical path.
WARM_BACKENDS = ("iam", "lambda", "logs", "sqs", "dynamodb", "rds", "cloudformation", "cloudwatch", "sts", "ssm")


def _warm_up() -> None:
    from moto.backends import get_backend

    for name in WARM_BACKENDS:
        try:
            get_backend(name)  # type: ignore[call-overload]
        except Exception as exc:  # noqa: BLE001 - a cold backend is only slower, never wrong
            print(f"moto: warm-up of {name} failed: {exc}", flush=True)


def _serve(port: int, state_dir: Path) -> int:
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from ..net import nodelay
    from . import moto_ext

    moto_ext.install()
    # Built here rather than through ThreadedMotoServer: its start() waits forever when the
    # port is taken, while make_server raises at once and the supervisor can retry another port.
    app = DomainDispatcherApplication(create_backend_app)

    class Handler(MotoRequestHandler):
        # socketserver's switch for TCP_NODELAY on each accepted connection (see net.py: without
        # it a keep-alive answer written in two sends waits for the client's delayed ACK).
        disable_nagle_algorithm = True

    server = make_server("127.0.0.1", port, app, True, request_handler=Handler)
    nodelay(server.socket)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    threading.Thread(target=_warm_up, name="moto-warm-up", daemon=True).start()
    moto_ext.start_background(state_dir)
    print(f"moto listening on http://127.0.0.1:{port}", flush=True)
    stop.wait()
    started = time.monotonic()
    server.shutdown()
    thread.join(timeout=5)
    print(f"moto stopped ({time.monotonic() - started:.1f}s after the signal)", flush=True)
    # Nothing to persist; skip the interpreter's teardown, whose garbage collection of moto's
    # object graph took 2-8 s on a loaded machine and pushed ``down`` past its SIGKILL deadline.
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llamadeploy.sandbox.moto_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        return _serve(args.port, args.state_dir)
    except OSError as exc:
        print(f"moto: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
