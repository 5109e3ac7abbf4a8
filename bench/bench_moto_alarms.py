"""moto_ext's alarm pass and prune on a backend holding N minutes of the idle sandbox's datums.

    .venv/bin/python bench/bench_moto_alarms.py [--minutes 60]

In-process moto (``mock_aws``) with the sandbox's four rollback alarms
(``observability.alarm_definitions``) and, per second, the Lambda and API
Gateway datums the front door publishes for the idle traffic (20 requests and 16
WebSocket connects a second). Prints the CPU of one alarm pass (the sandbox's
moto runs one every second) and of a prune that drops the oldest minute (one a
minute once an hour is held). Figures: bench/IDLE.md, "moto over time".
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _second_of_datums(second: int) -> dict[str, list[dict[str, Any]]]:
    from pytest_llamadeploy.sandbox.frontdoor.telemetry import CONNECT_ROUTE, Telemetry
    from pytest_llamadeploy.sandbox.physics import lambda_outcome

    t = Telemetry(None)
    at = second + 0.5
    for _ in range(20):
        t.record_invocation(function="onchain-api", resource="live", executed_version="1", version="1",
                            outcome=lambda_outcome(200), duration_ms=random.uniform(1, 10), now=at)
        t.record_rest(stage="live", status=200, latency_ms=random.uniform(2, 12),
                      integration_ms=random.uniform(1, 10), now=at)
    for _ in range(16):
        t.record_invocation(function="onchain-ws", resource="live", executed_version="1", version="1",
                            outcome=lambda_outcome(200), duration_ms=random.uniform(1, 10), now=at)
        t.record_ws(stage="live", route=CONNECT_ROUTE, integration_ms=3.0, now=at)
    ((s, bucket),) = t.take(everything=True).items()
    return t.datums(s, bucket)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args()

    import boto3
    from moto import mock_aws
    from moto.cloudwatch.models import cloudwatch_backends

    from pytest_llamadeploy.sandbox import moto_ext
    from pytest_llamadeploy.sandbox.observability import alarm_definitions

    moto_ext.install()
    with mock_aws():
        cw = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        for alarm in alarm_definitions("arn:aws:sns:us-east-1:123456789012:alerts", period=10):
            cw.put_metric_alarm(**alarm)
        backend = cloudwatch_backends["123456789012"]["us-east-1"]
        now = int(time.time())
        for second in range(now - args.minutes * 60, now):
            for namespace, datums in _second_of_datums(second).items():
                backend.put_metric_data(namespace, datums)
        print(f"{args.minutes} min of data: {len(backend.metric_data)} datums")
        moto_ext.evaluate_alarms(backend)
        passes = 20
        started = time.process_time()
        for _ in range(passes):
            moto_ext.evaluate_alarms(backend)
        print(f"alarm pass: {1000 * (time.process_time() - started) / passes:.1f} ms (one a second)")
        later = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=61 - args.minutes)
        started = time.process_time()
        dropped = moto_ext.prune(backend, now=later)
        print(f"prune: {dropped} datums dropped in {1000 * (time.process_time() - started):.0f} ms (one a minute)")
        started = time.process_time()
        moto_ext.evaluate_alarms(backend)
        print(f"the alarm pass after it: {1000 * (time.process_time() - started):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
