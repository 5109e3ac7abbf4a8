"""Benchmarks of the load runner (run by hand; figures go to bench/LOCUST.md).

1. The suite's way (``run_locust``: subprocess, JSON parsed) vs standalone
   ``locust`` on the command line, same locustfile, users and duration
   (goal: the suite reaches >= 90 % of standalone requests/s).
2. ``--locust-processes 2`` vs 1 (goal: >= 1.6x requests/s).

Target (``--target``), on 127.0.0.1 (free port, stopped by PID at the end), with
the endpoints the load's ApiUser calls, answering from memory so the load
generator, not the server, is what is measured:

- ``uvicorn`` (default): a Starlette app, one Python worker per ``--server-workers``;
  ~1.4k req/s per worker here, so on 2 cores it is the bottleneck before Locust is.
- ``nginx``: fixed JSON bodies from nginx (``apt-get install nginx-light``), one
  worker process; it spends a few percent of a core at these rates, which is
  the only way to see Locust's own scaling on a 2-core machine.

ApiUser only (no WebSocket); no pacing (``LLAMA_LOAD_PACING=0``).

    .venv/bin/python bench/bench_locust.py [--target nginx] [--users 20] [--duration 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pytest_llamadeploy.load.gate import LOCUSTFILE
from pytest_llamadeploy.load.runner import _child_env, _stop_group, free_port, locust_executable, run_locust
from pytest_llamadeploy.load.stats import RunStats

APP = textwrap.dedent('''
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def token(request):
        return JSONResponse({"token": "bench", "user": "bench", "expires_at": 0})

    async def chains(request):
        return JSONResponse({"chains": ["Ethereum", "Arbitrum"]})

    async def protocols(request):
        return JSONResponse({"chain": request.query_params.get("chain"), "protocols": []})

    async def tvl(request):
        return JSONResponse({"chain": request.path_params["chain"], "tvl": 1.0, "protocols": 1})

    app = Starlette(routes=[Route("/auth/token", token, methods=["POST"]), Route("/chains", chains),
                            Route("/protocols", protocols), Route("/tvl/{chain}", tvl)])
''')


def start_server(workdir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    (workdir / "benchapp.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "benchapp:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning", "--no-access-log", "--workers", str(workers)],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return _ready(proc, f"http://127.0.0.1:{port}", "the uvicorn bench server did not start")


def _ready(proc: subprocess.Popen[bytes], url: str, failure: str, seconds: float = 20.0) -> tuple[
        subprocess.Popen[bytes], str]:
    """``(proc, url)`` once ``url/chains`` answers 200; else stop the process group and exit with ``failure``."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/chains", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    _stop_group(proc)
    raise SystemExit(failure)


NGINX_CONF = '''
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    keepalive_requests 1000000;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        location = /auth/token {{ return 200 '{{"token": "bench", "user": "bench", "expires_at": 0}}'; }}
        location = /chains {{ return 200 '{{"chains": ["Ethereum", "Arbitrum"]}}'; }}
        location = /protocols {{ return 200 '{{"chain": "$arg_chain", "protocols": []}}'; }}
        location /tvl/ {{ return 200 '{{"chain": "Ethereum", "tvl": 1.0, "protocols": 1}}'; }}
    }}
}}
'''


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import shutil

    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        raise SystemExit("--target nginx needs nginx: apt-get install -y nginx-light")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=workdir, port=port))
    # -p: a prefix in the temporary folder, so nothing is written under /var or /etc.
    proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return _ready(proc, f"http://127.0.0.1:{port}", f"nginx did not start: see {workdir / 'nginx-error.log'}")


def suite_rps(url: str, users: int, duration: float, processes: int, out: Path) -> float:
    result = run_locust(LOCUSTFILE, url, users, users, duration, artifacts_dir=out, processes=processes,
                        user_classes=["ApiUser"], env={"LLAMA_LOAD_PACING": "0"}, name=f"suite-p{processes}")
    return result.stats.http.rps


def standalone_rps(url: str, users: int, duration: float, out: Path) -> float:
    # What an engineer would type; the JSON file is only read back to count.
    cmd = [*locust_executable(), "-f", str(LOCUSTFILE), "ApiUser", "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{int(duration)}s", "--host", url, "--json-file", str(out / "standalone"), "--only-summary"]
    subprocess.run(cmd, env=_child_env({"LLAMA_LOAD_PACING": "0"}), cwd=out, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=duration + 60, check=True)
    return RunStats.load(out / "standalone.json").http.rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", choices=["uvicorn", "nginx"], default="uvicorn")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn workers (--target uvicorn)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
        work = Path(tmp)
        proc, url = start_nginx(work) if args.target == "nginx" else start_server(work, args.server_workers)
        try:
            figures: dict[str, list[float]] = {"standalone": [], "suite_p1": [], "suite_p2": []}
            for i in range(args.repeat):
                # Interleaved so drift in the machine's load hits every variant alike.
                figures["standalone"].append(standalone_rps(url, args.users, args.duration, work))
                figures["suite_p1"].append(suite_rps(url, args.users, args.duration, 1, work))
                figures["suite_p2"].append(suite_rps(url, args.users, args.duration, 2, work))
                print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f} req/s" for k, v in figures.items()), flush=True)
        finally:
            _stop_group(proc)
    med = {k: statistics.median(v) for k, v in figures.items()}
    report = {
        "target": args.target, "users": args.users, "duration_s": args.duration, "repeat": args.repeat,
        "median_rps": {k: round(v, 1) for k, v in med.items()},
        "suite_vs_standalone": round(med["suite_p1"] / med["standalone"], 3),
        "processes2_vs_1": round(med["suite_p2"] / med["suite_p1"], 3),
        "runs": figures,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
