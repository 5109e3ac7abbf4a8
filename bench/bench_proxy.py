"""The performance suite's load through HAProxy against through the sandbox's Python front door.

    .venv/bin/llamadeploy sandbox up
    .venv/bin/python bench/bench_proxy.py [--users 10,50,100] [--duration 15] [--repeat 1] [--threads 1]
                                          [--targets frontdoor,haproxy,direct]

Issue 10, item 3: decide by measurement between tuning the Python front door and
routing through an existing proxy with runtime weights. For each user count this
runs the same Locust load (``load.gate.run_performance``, as bench_frontdoor.py)
twice, back to back: once through the sandbox's front door (API Gateway stage +
alias routing, telemetry, physics), once through an HAProxy started here in front
of the same release service processes, and prints API p95, requests/s and the
proxy's CPU (share of one core) for each, with the load average before and after.
``direct`` (in --targets) runs the load against the release's own URL, no proxy
at all: the floor both proxies are measured against.

The HAProxy stand-in does what routing needs and no more, so its figure is a floor
for what a proxy costs: one backend per function (``/ws`` -> the WebSocket
function, the rest -> the API function), one server per Lambda version named by the
version number and weighted by the alias's weights as moto holds them, set
through HAProxy's runtime API (``set weight`` on its admin socket, the way a
weight shift would reach it), and ``http-send-name-header`` to tell the release
which version it runs as (its EMF, i.e. the per-version ``service.*`` signals,
keeps working). It publishes none of AWS/Lambda's or AWS/ApiGateway's metrics,
no X-Ray segment, no Lambda Invoke API, no preview stage and no physics
(handled/unhandled errors, throttles): what routing through HAProxy would lose.

Not needed by the tests or scripts/setup.sh: without ``haproxy`` on PATH (Debian:
``apt-get install -y haproxy``, 2.6) it prints why and exits 0 having measured
nothing. Loopback only; HAProxy listens on a free 127.0.0.1 port, runs under
``timeout`` (bounded even if this process is killed), dies with this process
(PR_SET_PDEATHSIG) and is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_frontdoor import load_average, run_one  # noqa: E402
from bench_idle import sandbox_pids  # noqa: E402

API_FUNCTION = "onchain-api"
WS_FUNCTION = "onchain-ws"
#: HAProxy weights are integers 0-256; an alias weight of 1.0 is 256.
FULL_WEIGHT = 256


def _die_with_parent() -> None:
    """Run in the child before exec: SIGTERM when the bench process dies, whatever kills it."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def servers(state: Any) -> dict[str, dict[str, str]]:
    """function -> {version: "host:port"} of every release in the sandbox."""
    out: dict[str, dict[str, str]] = {API_FUNCTION: {}, WS_FUNCTION: {}}
    for release in state.versions.values():
        where = urlsplit(release["url"]).netloc
        for function, version in (release.get("lambda_versions") or {}).items():
            if function in out:
                out[function][str(version)] = where
    return out


def config(port: int, admin: Path, backends: dict[str, dict[str, str]], threads: int) -> str:
    def backend(name: str, function: str) -> str:
        lines = [f"backend {name}", "    balance random", "    http-reuse always",
                 f"    http-request set-header x-llama-lambda-function {function}",
                 # The chosen server's name (= the Lambda version) goes to the release as its runtime header.
                 "    http-send-name-header x-llama-lambda-version"]
        lines += [f"    server {version} {where} weight 0" for version, where in sorted(backends[function].items())]
        return "\n".join(lines)

    return f"""global
    nbthread {threads}
    maxconn 4096
    stats socket {admin} mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    option http-keep-alive

frontend live
    bind 127.0.0.1:{port}
    acl ws path_beg /ws
    use_backend ws if ws
    default_backend api

{backend("api", API_FUNCTION)}

{backend("ws", WS_FUNCTION)}
"""


def runtime(admin: Path, command: str) -> str:
    """One command on HAProxy's runtime API (the admin socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(admin))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode().strip()


def alias_weights(state: Any, function: str, alias: str = "live") -> dict[str, int]:
    """The alias's routing as moto holds it, in HAProxy weights (version -> 0..256)."""
    from pytest_llamadeploy.aws import AwsConfig
    from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

    client = AwsConfig(region=state.region or "us-east-1", endpoint_url=state.aws_endpoint,
                       credentials=dict(SANDBOX_CREDENTIALS)).client("lambda")
    found = client.get_alias(FunctionName=function, Name=alias)
    extra = {str(v): float(w) for v, w in ((found.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
                                            or {}).items()}
    weights = {v: round(w * FULL_WEIGHT) for v, w in extra.items()}
    weights[str(found["FunctionVersion"])] = FULL_WEIGHT - sum(weights.values())
    return weights


def apply_weights(admin: Path, backend: str, weights: dict[str, int], known: dict[str, str]) -> dict[str, str]:
    """``set weight`` for every server of the backend (0 for versions off the alias); returns what HAProxy reports."""
    for version in known:
        reply = runtime(admin, f"set weight {backend}/{version} {weights.get(version, 0)}")
        if reply:
            raise SystemExit(f"bench_proxy: HAProxy refused 'set weight {backend}/{version}': {reply}")
    return {v: runtime(admin, f"get weight {backend}/{v}") for v in known}


def runs_as(url: str) -> dict[str, object]:
    """What the release says it ran as for one request through HAProxy (its X-Ray annotations header)."""
    import httpx

    from pytest_llamadeploy.sandbox.physics import ANNOTATIONS_HEADER

    response = httpx.get(url + "/chains", timeout=5, trust_env=False)
    return json.loads(response.headers.get(ANNOTATIONS_HEADER) or "{}")


def wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"bench_proxy: haproxy exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling for the listener, bounded by the deadline
    raise SystemExit(f"bench_proxy: haproxy not listening on 127.0.0.1:{port} after {deadline:g}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="10,50,100")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs per user count")
    parser.add_argument("--threads", type=int, default=1, help="HAProxy nbthread (1: one core, like the front door)")
    parser.add_argument("--targets", default="frontdoor,haproxy",
                        help="comma-separated, run in this order per user count: frontdoor, haproxy, direct")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"frontdoor", "haproxy", "direct"}
    if unknown:
        parser.error(f"--targets: unknown {', '.join(sorted(unknown))}; choose from frontdoor, haproxy, direct")

    binary = shutil.which("haproxy")
    if binary is None and "haproxy" in targets:
        print("bench_proxy: skipped: haproxy is not installed (Debian: apt-get install -y haproxy, 2.6); "
              "nothing was measured", file=sys.stderr)
        return 0

    from pytest_llamadeploy.net import free_port
    from pytest_llamadeploy.sandbox.state import SandboxState

    state = SandboxState.load(None)
    users = [int(u) for u in args.users.split(",")]
    bound = len(users) * args.repeat * len(targets) * (args.duration + 60) + 60
    sandbox = sandbox_pids()
    services = {k: v for k, v in sandbox.items() if k.startswith("service")}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        folder = Path(tmp)
        proc = None
        # target -> API URL ("" = the sandbox's front door) and the processes whose CPU is measured.
        baseline = next(iter(state.versions.values()))
        urls: dict[str, str] = {"direct": baseline["url"].rstrip("/")}
        pids: dict[str, dict[str, int] | None] = {"direct": {"frontdoor": sandbox["frontdoor"], **services}}
        try:
            if binary is not None and "haproxy" in targets:
                port, admin = free_port(), folder / "admin.sock"
                backends = servers(state)
                (folder / "haproxy.cfg").write_text(config(port, admin, backends, args.threads))
                check = subprocess.run([binary, "-c", "-q", "-f", str(folder / "haproxy.cfg")],
                                       capture_output=True, text=True, timeout=30)
                if check.returncode != 0:
                    raise SystemExit(f"bench_proxy: haproxy refused the config: {check.stderr.strip()}")
                # `timeout`: HAProxy cannot outlive the bench's bound even if nothing below runs.
                proc = subprocess.Popen(["timeout", "-k", "5", str(int(bound)), binary, "-db", "-f",
                                         str(folder / "haproxy.cfg")], preexec_fn=_die_with_parent)
                wait_listening(port, proc)
                applied = {
                    backend: apply_weights(admin, backend, alias_weights(state, function), backends[function])
                    for backend, function in (("api", API_FUNCTION), ("ws", WS_FUNCTION))
                }
                haproxy_pid = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                                                 timeout=5).stdout.split()[0])
                print(json.dumps({"haproxy": binary, "pid": haproxy_pid, "port": port, "nbthread": args.threads,
                                  "weights_via_runtime_api": applied,
                                  "release_runs_as": runs_as(f"http://127.0.0.1:{port}")}), flush=True)
                urls["haproxy"] = f"http://127.0.0.1:{port}"
                pids["haproxy"] = {"haproxy": haproxy_pid, "frontdoor": sandbox["frontdoor"], **services}
            for n in users:
                for _ in range(args.repeat):
                    for target in targets:
                        url = urls.get(target, "")
                        ws = "ws" + url.removeprefix("http") + "/ws" if url else ""
                        print(json.dumps({"proxy": target, "loadavg_before": load_average(),
                                          **run_one(state, n, args.duration, 1, folder, top=8, api_url=url,
                                                    ws_url=ws, pids=pids.get(target))}), flush=True)
        finally:
            if proc is not None:
                proc.terminate()  # `timeout` passes SIGTERM on to HAProxy
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
