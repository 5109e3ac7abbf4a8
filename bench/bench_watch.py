"""Benchmark of the metrics watch (run by hand; figures go in bench/WATCH.md).

    .venv/bin/python bench/bench_watch.py [--polls 20]

Starts the sandbox's moto process (moto_ext installed) on a free 127.0.0.1
port with a temporary state folder, publishes 90 s of per-second Lambda
series (old and new version) for 2 and for 50 functions, then measures:
GetMetricData calls per poll (botocore ``before-call`` events) and the wall
time of one poll and decision (BakeWatch.poll). Stops moto when done.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_llamadeploy import metricnames as mn  # noqa: E402
from pytest_llamadeploy.metrics.watch import BakeWatch  # noqa: E402
from pytest_llamadeploy.policy import load_policy  # noqa: E402


def _client(url: str):
    import boto3
    from botocore.config import Config

    return boto3.client("cloudwatch", endpoint_url=url, region_name="us-east-1", aws_access_key_id="sandbox",
                        aws_secret_access_key="sandbox", config=Config(retries={"max_attempts": 1}))


def _publish(cw, functions: list[str], seconds: int, now: float) -> None:
    for fn in functions:
        data = []
        for s in range(seconds):
            at = datetime.fromtimestamp(now - seconds + s, tz=UTC)
            for version, inv in (("3", 18.0), ("4", 2.0)):
                dims = mn.lambda_version_dims(fn, "live", version)
                data += [
                    {"MetricName": mn.LAMBDA_INVOCATIONS, "Dimensions": dims, "Value": inv, "Timestamp": at},
                    {"MetricName": mn.LAMBDA_ERRORS, "Dimensions": dims, "Value": 0.0, "Timestamp": at},
                    {"MetricName": mn.LAMBDA_THROTTLES, "Dimensions": dims, "Value": 0.0, "Timestamp": at},
                    {"MetricName": mn.LAMBDA_DURATION, "Dimensions": dims, "Values": [20.0, 25.0], "Timestamp": at},
                ]
        for i in range(0, len(data), 1000):
            cw.put_metric_data(Namespace=mn.LAMBDA, MetricData=data[i:i + 1000])


def bench(url: str, n_functions: int, polls: int, into_bake: float) -> dict[str, float]:
    policy = load_policy(ROOT / "policies", "sandbox").policy
    names = ["onchain-api", "onchain-ws"] + [f"fn{i}" for i in range(n_functions - 2)]
    policy = policy.model_copy(update={"service": policy.service.model_copy(update={"functions": names})})
    cw = _client(url)
    now = time.time()
    _publish(cw, names, 90, now)
    calls = [0]
    cw.meta.events.register("before-call.cloudwatch.GetMetricData", lambda **_: calls.__setitem__(0, calls[0] + 1))
    watch = BakeWatch(cw, policy, names, "live", {fn: "3" for fn in names}, {fn: "4" for fn in names},
                      now - into_bake, None, lambda b: None)
    watch.poll()  # warm-up: first call per service is slow in moto
    calls[0] = 0
    times = []
    for _ in range(polls):
        t0 = time.perf_counter()
        watch.poll()
        times.append(time.perf_counter() - t0)
    return {"functions": n_functions, "series": len(watch.evidence()["polls"][-1]["values"]),
            "calls_per_poll": calls[0] / polls, "median_ms": statistics.median(times) * 1000,
            "max_ms": max(times) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tempfile.mkdtemp(prefix="bench-watch-")
    proc = subprocess.Popen([sys.executable, "-m", "pytest_llamadeploy.sandbox.moto_server", "--port", str(port),
                             "--state-dir", state], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        if "listening" not in (proc.stdout.readline() if proc.stdout else ""):
            print("moto did not start", file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{port}"
        print("functions  into bake  rule-values  GetMetricData/poll  poll+decision median  max")
        # 10 s: every window starts at the shift (one datapoint per series);
        # 90 s: the 1 m triggers slide while the 5 m one does not (bucketed sums).
        for into in (10.0, 90.0):
            for n in (2, 50):
                r = bench(url, n, args.polls, into)
                print(f"{r['functions']:>9}  {into:>8.0f}s  {r['series']:>11}  {r['calls_per_poll']:>18g}  "
                      f"{r['median_ms']:>17.1f} ms  {r['max_ms']:.1f} ms")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
