"""Keep-alive latency of the sandbox's servers: N sequential requests on ONE client.

    .venv/bin/llamadeploy sandbox up
    .venv/bin/python bench/bench_keepalive.py [--requests 200] [--path /health]

Measures, on one httpx client each (so every request after the first reuses the
connection, as the watch's probes, Locust and the front door's own backend pool do):
  - direct: a release's service process (versions[baseline].url in state.json)
  - frontdoor: the front door (API Gateway + alias routing) in front of it
  - moto: a boto3 call (lambda get_alias) against the sandbox's moto server
and prints p50/p95/max per target. Goal (issue 10): direct <= 5 ms, front door adds <= 3 ms.

A ~40 ms floor on a keep-alive request is Nagle's algorithm meeting the client's
delayed ACK (TCP_NODELAY missing on the server's accepted socket), not load.
Targets 127.0.0.1 only; bounded by --requests and a 5 s timeout per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
        "max": round(ordered[-1], 2),
    }


def time_http(url: str, requests: int) -> dict[str, float]:
    import httpx

    samples: list[float] = []
    with httpx.Client(timeout=5.0) as client:
        client.get(url)  # open the connection: every timed request reuses it
        for _ in range(requests):
            t0 = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - t0) * 1000.0)
            response.raise_for_status()
    return _quantiles(samples)


def time_moto(state, requests: int) -> dict[str, float]:
    from pytest_llamadeploy.sandbox.provision import sandbox_aws

    lam = sandbox_aws(state).client("lambda")
    lam.get_alias(FunctionName="onchain-api", Name="live")
    samples: list[float] = []
    for _ in range(requests):
        t0 = time.perf_counter()
        lam.get_alias(FunctionName="onchain-api", Name="live")
        samples.append((time.perf_counter() - t0) * 1000.0)
    return _quantiles(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from pytest_llamadeploy.sandbox.state import SandboxState

    state = SandboxState.load(None)
    baseline = state.extra["baseline"]["release"]
    direct = state.versions[baseline]["url"].rstrip("/")
    results = {
        "direct": time_http(direct + args.path, args.requests),
        "frontdoor": time_http(state.api_url.rstrip("/") + args.path, args.requests),
        "moto_get_alias": time_moto(state, args.requests),
    }
    results["frontdoor_adds_p50"] = round(results["frontdoor"]["p50"] - results["direct"]["p50"], 2)
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name:18} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
