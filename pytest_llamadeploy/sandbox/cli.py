"""``llamadeploy sandbox up | down | status [--json] | deploy | fault``.

``up`` starts the components in dependency order (moto, PostgreSQL, Redis,
state written, AWS resources, schema, baseline release ``v0`` behind alias
``live``, front door, traffic), each waited for by polling with a deadline.
It is idempotent, and a crashed earlier run's leftovers (recorded PIDs that
still run the recorded command) are stopped before a fresh start. ``down``
stops exactly the recorded processes and checks their ports are closed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..net import free_port, port_open
from . import postgres, redis_server
from .deploy import (
    FaultError,
    deploy_locked,
    deploy_release,
    faults_from_env,
    parse_fault_args,
    release_running,
    service_available,
    set_faults,
    state_lock,
)
from .provision import BASELINE_RELEASE, FUNCTIONS, sandbox_aws
from .state import SandboxNotRunning, SandboxState, sandbox_dir
from .supervisor import (
    SandboxError,
    child_env,
    http_answers,
    pid_matches,
    python_module,
    runnable,
    spawn,
    stop_pid,
    wait_port_closed,
    wait_until,
)

MOTO_MODULE = "pytest_llamadeploy.sandbox.moto_server"
FRONTDOOR_MODULE = "pytest_llamadeploy.sandbox.frontdoor"
TRAFFIC_MODULE = "pytest_llamadeploy.sandbox.traffic"
#: WebSocket clients of the background traffic, each reconnecting about once a second:
#: ~16 connects/s, so the new version sees ~1.6/s at 10 % and the WebSocket rules of
#: policies/sandbox.yaml (5-10 samples in a 15 s window) can reach a verdict.
TRAFFIC_WS_CLIENTS = 16
SERVICE_DB_MODULE = "pytest_llamadeploy.sandbox.service.db"
DEFAULT_TRAFFIC_RATE = 20.0
#: Stop order for ``down``: consumers before what they consume.
STOP_ORDER = ("traffic", "frontdoor", "redis", "postgres", "moto")

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- components


def _spawn_component(state: SandboxState, name: str, module: str, args: list[str],
                     port: bool) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    log_path = state.directory / "logs" / f"{name}.log"
    chosen = free_port() if port else 0
    argv = python_module(module, *(["--port", str(chosen)] if port else []), "--state-dir", str(state.directory), *args)
    proc = spawn(argv, log_path, child_env(state.directory))
    record: dict[str, Any] = {"pid": proc.pid, "cmd": argv, "log": str(log_path),
                              "markers": [module, str(state.directory)]}
    if port:
        record["port"] = chosen
    return proc, record


def _await_component(name: str, proc: subprocess.Popen[bytes], record: dict[str, Any], timeout: float,
                     ready: Callable[[int], bool] | None = None) -> None:
    """Wait for a spawned component; on failure it is killed and the error raised."""
    log_path = Path(record["log"])
    try:
        if "port" not in record:
            if proc.poll() is not None:
                raise SandboxError(f"{name} exited at once with code {proc.returncode} (log {log_path})")
            return
        check = ready or port_open
        wait_until(lambda: check(int(record["port"])), timeout, f"{name} on 127.0.0.1:{record['port']}",
                   proc=proc, log_path=log_path)
    except SandboxError:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise


def _start_python_component(state: SandboxState, name: str, module: str, args: list[str], *,
                            port: bool, timeout: float, ready: Callable[[int], bool] | None = None,
                            spawned: tuple[subprocess.Popen[bytes], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Start (or finish starting ``spawned``) and wait; a lost port race is retried on another port."""
    last: SandboxError | None = None
    for _attempt in range(3 if port else 1):
        proc, record = spawned or _spawn_component(state, name, module, args, port)
        spawned = None
        try:
            _await_component(name, proc, record, timeout, ready)
        except SandboxError as exc:
            last = exc
            continue
        return record
    raise last or SandboxError(f"{name} did not start")


def _moto_ready(port: int) -> bool:
    return http_answers(f"http://127.0.0.1:{port}/moto-api/data.json")


def component_alive(entry: dict[str, Any]) -> bool:
    pid = entry.get("pid")
    if not pid_matches(pid, entry.get("markers") or []):
        return False
    port = entry.get("port")
    return not port or port_open(int(port))


def _healthy(state: SandboxState) -> list[str]:
    """Names of recorded components that are dead (empty: the sandbox runs)."""
    if not state.components:
        return ["(none recorded)"]
    return [name for name, entry in state.components.items() if not component_alive(entry)]


# ---------------------------------------------------------------------------- up / down


def up(directory: Path, traffic_rate: float = DEFAULT_TRAFFIC_RATE, timeout: float = 60.0,
       say: Say = _stderr, physics: str = "fast", metric_lag: float | None = None) -> tuple[SandboxState, bool]:
    """Bring the sandbox up (or find it up). Returns (state, whether it was started now).

    ``physics`` (sandbox/physics.py): ``fast`` keeps AWS's meanings on a compressed clock for CI;
    ``aws`` serves AWS/* metrics at 60-s resolution, each minute ``metric_lag`` seconds late
    (default: drawn between 60 and 180 s). A running sandbox with other physics is refused.
    """
    from .physics import physics as make_physics

    chosen = make_physics(physics, metric_lag)  # a bad name fails before anything starts
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with state_lock(directory, timeout=timeout * 5):
        try:
            existing: SandboxState | None = SandboxState.load(directory)
        except SandboxNotRunning:
            existing = None
        if existing is not None:
            dead = _healthy(existing)
            running = (existing.extra.get("physics") or {}).get("name", "fast")
            if not dead and running != chosen.name:
                raise SandboxError(f"the sandbox in {directory} runs {running} physics, not {chosen.name}: "
                                   f"`llamadeploy sandbox down` first, then `llamadeploy sandbox up --physics "
                                   f"{chosen.name}`")
            if not dead:
                return existing, False
            say(f"sandbox in {directory}: stale state ({', '.join(dead)} not running); cleaning up")
            _stop_all(existing, say)
            existing.path.unlink(missing_ok=True)
        state = SandboxState(directory=directory)
        state.extra["physics"] = {"name": chosen.name, "metric_lag": metric_lag, "describe": chosen.describe()}
        try:
            _start_all(state, traffic_rate, timeout, say)
        except BaseException:
            say("sandbox up failed; stopping what was started")
            try:
                _stop_all(state, say)
            finally:
                state.path.unlink(missing_ok=True)
            raise
        return state, True


def _start_all(state: SandboxState, traffic_rate: float, timeout: float, say: Say) -> None:
    directory = state.directory
    started = time.monotonic()

    def step(message: str) -> None:
        say(f"[{time.monotonic() - started:5.1f}s] {message}")

    # moto's imports take seconds; PostgreSQL's initdb runs meanwhile. Its PID is recorded at once
    # so a failure below still stops it.
    moto_spawned = _spawn_component(state, "moto", MOTO_MODULE, [], port=True)
    state.components["moto"] = moto_spawned[1]
    state.save()
    pg = postgres.start(directory, timeout=timeout)
    state.components["postgres"] = pg.component()
    state.postgres_dsn = pg.dsn
    state.save()
    step(f"postgres at {pg.dsn}")

    state.components["moto"] = _start_python_component(state, "moto", MOTO_MODULE, [], port=True, timeout=timeout,
                                                       ready=_moto_ready, spawned=moto_spawned)
    state.aws_endpoint = f"http://127.0.0.1:{state.components['moto']['port']}"
    state.save()
    step(f"moto at {state.aws_endpoint}")

    redis = redis_server.start(directory, timeout=timeout)
    state.components["redis"] = redis.component()
    state.redis_url = redis.url
    state.save()
    step(f"redis at {redis.url}")

    from .provision import NAMES, create_alias, provision, provision_observability

    state.extra["names"] = dict(NAMES)
    aws = sandbox_aws(state)
    provided = provision(aws, state)
    state.sqs_queue_url = provided["sqs_queue_url"]
    state.extra["alerts_topic_arn"] = provided["alerts_topic_arn"]
    state.save()
    step("AWS resources provisioned in moto")
    if provision_observability(aws, state):
        step("alarms and dashboards provisioned")

    if _init_database(state.postgres_dsn):
        step("database schema and seed data loaded")
    else:
        # The service applies its schema (under an advisory lock) when each release starts.
        step(f"schema: left to the release processes ({SERVICE_DB_MODULE} has no ensure_schema/seed)")

    if service_available():
        versions, _ = deploy_locked(state, BASELINE_RELEASE, [], {})
        step(f"baseline release {BASELINE_RELEASE} at {state.versions[BASELINE_RELEASE]['url']}")
    else:
        # Without the service the alias still needs a version 1 to point at.
        from .deploy import publish_versions

        versions = publish_versions(state, BASELINE_RELEASE, "")
        state.versions[BASELINE_RELEASE] = {"lambda_versions": versions, "faults": {}, "url": ""}
        say("warning: reference service missing; baseline v0 published without a backend")
    create_alias(aws, versions)
    state.extra["baseline"] = {"release": BASELINE_RELEASE, "lambda_versions": versions}
    state.save()
    step(f"aliases live and preview -> {versions}")

    baseline_url = state.versions[BASELINE_RELEASE].get("url")
    if baseline_url:
        # Before the front door starts: see sandbox/warm.py for why these misses must not be published.
        from .warm import warm_cache

        try:
            step(f"cache warmed: {warm_cache(baseline_url)} cached reads")
        except Exception as exc:  # noqa: BLE001 - a cold cache is a worse rehearsal, not a broken sandbox
            say(f"warning: cache warm-up failed ({type(exc).__name__}: {exc}); the first minutes run cold")

    if runnable(FRONTDOOR_MODULE):
        ready = directory / "frontdoor.ready"
        ready.unlink(missing_ok=True)
        state.components["frontdoor"] = _start_python_component(
            state, "frontdoor", FRONTDOOR_MODULE, ["--ready-file", str(ready)], port=True, timeout=timeout)
        port = state.components["frontdoor"]["port"]
        # Its sockets listen before it has written which ports it chose: wait for the file too.
        wait_until(ready.exists, timeout, "front door ready file", log_path=directory / "logs" / "frontdoor.log")
        ports = json.loads(ready.read_text())
        state.components["frontdoor"]["extra_ports"] = [ports["preview_port"], ports["lambda_port"]]
        state.api_url = f"http://127.0.0.1:{port}"
        state.ws_url = f"ws://127.0.0.1:{port}/ws"
        state.preview_api_url = f"http://127.0.0.1:{ports['preview_port']}"
        state.preview_ws_url = f"ws://127.0.0.1:{ports['preview_port']}/ws"
        state.lambda_endpoint = f"http://127.0.0.1:{ports['lambda_port']}"
        state.save()
        step(f"front door: live stage {state.api_url}, preview stage {state.preview_api_url}, "
              f"Lambda API {state.lambda_endpoint} ({state.extra['physics']['describe']})")
    else:
        say(f"warning: {FRONTDOOR_MODULE} is not there yet; no api_url/ws_url")

    if traffic_rate > 0 and state.api_url and runnable(TRAFFIC_MODULE):
        state.components["traffic"] = _start_python_component(state, "traffic", TRAFFIC_MODULE,
                                                              ["--rate", f"{traffic_rate:g}",
                                                               "--ws-clients", str(TRAFFIC_WS_CLIENTS)], port=False,
                                                              timeout=timeout)
        state.extra["traffic_rate"] = traffic_rate
        state.save()
        step(f"traffic at {traffic_rate:g} req/s")
    state.extra["started_at"] = time.time()
    state.save()


def _init_database(dsn: str) -> bool:
    """The reference service's schema and seed data (its module owns both). False if it is not there yet."""
    try:
        db = importlib.import_module(SERVICE_DB_MODULE)
    except ModuleNotFoundError:
        return False
    schema = next((getattr(db, n) for n in ("ensure_schema", "create_schema", "migrate") if hasattr(db, n)), None)
    seed = next((getattr(db, n) for n in ("seed", "seed_data", "ensure_seed") if hasattr(db, n)), None)
    if schema is None and seed is None:
        return False
    if schema is not None:
        schema(dsn)
    if seed is not None:
        seed(dsn)
    return True


def _stop_all(state: SandboxState, say: Say) -> list[str]:
    """Stop every recorded process (that still runs the recorded command). Returns problems."""
    problems: list[str] = []
    ordered = [n for n in STOP_ORDER if n in state.components] + [n for n in state.components if n not in STOP_ORDER]
    # Clients of the releases (traffic, front door) first, then the releases, then what they use.
    front = [n for n in ordered if n in ("traffic", "frontdoor")]
    for name in front:
        problems += _stop_component(name, state.components[name], say)
    for release, entry in state.versions.items():
        if entry.get("pid"):
            problems += _stop_component(f"release {release}", entry, say)
    for name in ordered:
        if name not in front:
            problems += _stop_component(name, state.components[name], say)
    return problems


def _stop_component(name: str, entry: dict[str, Any], say: Say) -> list[str]:
    started = time.monotonic()
    try:
        if name == "postgres":
            outcome = postgres.stop(entry)
        else:
            outcome = stop_pid(int(entry.get("pid") or 0), entry.get("markers") or [], timeout=10.0, name=name)
    except SandboxError as exc:
        return [f"{name}: {exc}"]
    say(f"{name} (pid {entry.get('pid')}): {outcome} in {time.monotonic() - started:.1f}s")
    return []


def down(directory: Path, say: Say = _stderr) -> bool:
    """Stop the sandbox in directory. Returns False (and says why) if something is left listening."""
    directory = directory.resolve()
    with state_lock(directory):
        try:
            state = SandboxState.load(directory)
        except SandboxNotRunning:
            say(f"no sandbox state in {directory}: nothing to stop")
            return True
        problems = _stop_all(state, say)
        entries = [*state.components.values(), *state.versions.values()]
        ports = [int(e["port"]) for e in entries if e.get("port")]
        ports += [int(p) for e in entries for p in e.get("extra_ports") or []]
        listening = [p for p in ports if not wait_port_closed(p, timeout=5.0)]
        if listening:
            problems.append(f"still listening on 127.0.0.1 port(s) {', '.join(map(str, listening))}")
        if problems:
            for problem in problems:
                say(f"problem: {problem}")
            return False
        state.path.unlink(missing_ok=True)
        if (directory / "pgdata").is_symlink():
            (directory / "pgdata").unlink()
        return True


# ---------------------------------------------------------------------------- status


def status_data(directory: Path) -> dict[str, Any]:
    state = SandboxState.load(directory)
    data = state.to_json()
    data["directory"] = str(state.directory)
    for entry in data["components"].values():
        entry["alive"] = component_alive(entry)
    for release, entry in data["versions"].items():
        entry["alive"] = release_running(state, release) if entry.get("pid") else False
    data["running"] = all(e["alive"] for e in data["components"].values()) and bool(data["components"])
    try:
        from .provision import PREVIEW_ALIAS, alias_state

        alive = data["components"].get("moto", {}).get("alive")
        data["aliases"] = alias_state(sandbox_aws(state)) if alive else {}
        data["preview_aliases"] = alias_state(sandbox_aws(state), PREVIEW_ALIAS) if alive else {}
    except Exception as exc:  # noqa: BLE001 - status reports what it can; the error is shown, not hidden
        data["aliases"] = {}
        data["aliases_error"] = str(exc)
    return data


def _print_status(data: dict[str, Any]) -> None:
    from ..redact import redact

    print(f"sandbox {data['directory']}: {'running' if data['running'] else 'NOT fully running'}")
    for key in ("aws_endpoint", "lambda_endpoint", "api_url", "ws_url", "preview_api_url", "preview_ws_url",
                "postgres_dsn", "redis_url", "sqs_queue_url"):
        print(f"  {key:15} {redact(str(data.get(key) or '-'))}")
    physics = (data.get("extra") or {}).get("physics") or {}
    print(f"  {'physics':15} {physics.get('describe') or physics.get('name') or 'fast'}")
    print("components:")
    for name, entry in data["components"].items():
        print(f"  {name:10} pid {entry.get('pid')!s:8} port {entry.get('port') or '-'!s:6} "
              f"{'alive' if entry['alive'] else 'DEAD'}")
    print("releases:")
    for release, entry in data["versions"].items():
        versions = ", ".join(f"{f}:{v}" for f, v in (entry.get("lambda_versions") or {}).items())
        faults = ", ".join(f"{k}={v}" for k, v in (entry.get("faults") or {}).items()) or "no faults"
        print(f"  {release:10} {entry.get('url') or '-':24} {'alive' if entry['alive'] else 'DEAD':5} "
              f"versions {versions or '-'}; {faults}")
    print("aliases:")
    for name, key in (("live", "aliases"), ("preview", "preview_aliases")):
        for function, alias in data.get(key, {}).items():
            weights = ", ".join(f"v{v}={w:g}" for v, w in alias["weights"].items())
            print(f"  {function}:{name} -> {alias['version']}{' + ' + weights if weights else ''}")
    if data.get("aliases_error"):
        print(f"  (cannot read aliases: {data['aliases_error']})")


# ---------------------------------------------------------------------------- argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="state folder (default: $LLAMADEPLOY_SANDBOX_DIR or .llamadeploy/sandbox)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="state folder")
        return p

    p_up = add("up", "start the sandbox (idempotent; cleans up after a crashed run)")
    p_up.add_argument("--traffic-rate", type=float, default=DEFAULT_TRAFFIC_RATE,
                      help="background requests per second (0 disables; default 20)")
    p_up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each component")
    p_up.add_argument("--physics", choices=("fast", "aws"), default="fast",
                      help="fast: AWS's meanings on a compressed clock (CI); aws: AWS/* metrics per 60 s, "
                           "each minute visible minutes late (default fast)")
    p_up.add_argument("--metric-lag", type=_seconds, default=None, metavar="SECONDS",
                      help="fix the AWS/* metrics' delay instead of drawing it (aws: 60-180 s, fast: 1-3 s)")
    add("down", "stop exactly the processes the sandbox started")
    p_status = add("status", "components, endpoints, releases, alias state")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_deploy = add("deploy", "start a release's process and publish a Lambda version of each function")
    p_deploy.add_argument("--release", required=True)
    p_deploy.add_argument("--fault", action="extend", nargs="+", default=[], metavar="KNOB=VALUE",
                          help=f"faults to start with (also from ${'{'}LLAMADEPLOY_SANDBOX_FAULTS{'}'})")
    p_fault = add("fault", "change a running release's faults live")
    p_fault.add_argument("--release", required=True)
    p_fault.add_argument("faults", nargs="+", metavar="KNOB=VALUE")


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds, e.g. 90") from None
    if not 0.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError(f"{raw!r}: a lag between 0 and 3600 seconds")
    return value


def run(args: argparse.Namespace) -> int:
    directory = sandbox_dir(args.dir)
    try:
        if args.action == "up":
            started = time.monotonic()
            state, fresh = up(directory, traffic_rate=args.traffic_rate, timeout=args.timeout,
                              physics=args.physics, metric_lag=args.metric_lag)
            _stderr(f"sandbox {'started' if fresh else 'already running'} in {directory} "
                    f"({time.monotonic() - started:.1f}s)")
            _print_status(status_data(directory))
            return 0
        if args.action == "down":
            started = time.monotonic()
            ok = down(directory)
            _stderr(f"sandbox {'stopped' if ok else 'NOT cleanly stopped'} ({time.monotonic() - started:.1f}s)")
            return 0 if ok else 1
        if args.action == "status":
            data = status_data(directory)
            if args.json:
                print(json.dumps(data, indent=2, sort_keys=True, default=str))
            else:
                _print_status(data)
            return 0 if data["running"] else 1
        if args.action == "deploy":
            pairs = [*faults_from_env(), *args.fault]
            versions, fresh = deploy_release(directory, args.release, pairs)
            for function in FUNCTIONS:
                print(f"{function} {versions[function]}")
            state = SandboxState.load(directory)
            entry = state.versions[args.release]
            print(json.dumps({"release": args.release, "lambda_versions": versions, "url": entry.get("url"),
                              "faults": entry.get("faults") or {}, "published_now": fresh}, sort_keys=True))
            return 0
        if args.action == "fault":
            parse_fault_args(args.faults)  # a bad knob is reported before the sandbox is even looked at
            faults = set_faults(directory, args.release, args.faults)
            print(json.dumps({"release": args.release, "faults": faults}, sort_keys=True))
            return 0
    except FaultError as exc:
        _stderr(f"error: {exc}")
        return 2
    except SandboxNotRunning as exc:
        _stderr(f"error: {exc}")
        return 3
    except SandboxError as exc:
        _stderr(f"error: {exc}")
        return 1
    raise AssertionError(f"unhandled sandbox action {args.action}")
