"""The monitoring gate suite can fail (issue 15): run suites/monitoring itself against moto, healthy and broken.

The suite runs in-process (pytester) without the llamadeploy plugin: a conftest hands it the
``llama`` fixture (a StageContext on moto) and the settings its own conftest parametrizes from,
as test_health_suite.py does for the health suite. Each check is shown passing on a healthy
env first, so its failure afterwards is the planted fault's and not a broken test bed's.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.aws_setup import FUNCTIONS

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
NEW = {fn: "2" for fn in FUNCTIONS}

CONFTEST = """
import json, os
from pathlib import Path

import pytest

from pytest_llamadeploy.context import StageContext
from pytest_llamadeploy.options import Settings
from pytest_llamadeploy.plugin import SETTINGS_KEY


def pytest_configure(config):
    here = Path(os.environ["LLAMA_TEST_CONTEXT"])
    data = json.loads(here.read_text())
    config.stash[SETTINGS_KEY] = Settings(
        env=data["env"], stage=data["stage"], release=data["release"], policy_dir=Path(data["policy_dir"]),
        plan=False, approved_by=None, to_version=None, emergency=False, reason=None, alluredir=here.parent,
        artifacts=here.parent, rootdir=here.parent)


@pytest.fixture(scope="session")
def llama():
    return StageContext.load(Path(os.environ["LLAMA_TEST_CONTEXT"]))
"""

#: The checks the issue names: a dashboard, the alarms, X-Ray traces and CloudWatch Logs of the new version.
SELECTED = "Main or alarms or xray or logs"


def _client(url: str, service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _healthy(url: str, policy: Any, now: float) -> None:
    """Every part the selected checks read, present and quiet, with data in the bake window."""
    cw = _client(url, "cloudwatch")
    row = ["AWS/Lambda", "Invocations", "FunctionName", "onchain-api"]
    cw.put_dashboard(DashboardName="Main", DashboardBody=json.dumps({"widgets": [
        {"type": "metric", "properties": {"metrics": [row], "stat": "Sum", "period": 60, "region": "us-east-1"}}]}))
    cw.put_metric_data(Namespace=row[0], MetricData=[{"MetricName": row[1], "Value": 5.0, "Timestamp": now - 30,
                                                      "Dimensions": [{"Name": row[2], "Value": row[3]}]}])
    for name in policy.monitoring.alarms:
        cw.put_metric_alarm(AlarmName=name, MetricName="Errors", Namespace="AWS/Lambda", Statistic="Sum", Period=60,
                            EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold",
                            ActionsEnabled=True, AlarmActions=["arn:aws:sns:us-east-1:123456789012:onchain-alarms"])
        cw.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="quiet")
    xray, logs = _client(url, "xray"), _client(url, "logs")
    for fn, version in NEW.items():
        name = policy.resources.xray_service if fn == policy.service.api_function else fn
        xray.put_trace_segments(TraceSegmentDocuments=[json.dumps({
            "name": name, "id": uuid.uuid4().hex[:16], "trace_id": f"1-{int(now):08x}-{uuid.uuid4().hex[:24]}",
            "start_time": now - 20, "end_time": now - 19.9, "annotations": {"function_version": version}})])
        group, stream = policy.resources.log_group(fn), f"2026/12/02/[{version}]{uuid.uuid4().hex}"
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": int((now - 20) * 1000), "message": f"REPORT Version: {version}"}])


def _broken(url: str, policy: Any) -> None:
    """A deleted dashboard, the alarms in ALARM, no logs (and no traces: see the broken run's window)."""
    cw = _client(url, "cloudwatch")
    cw.delete_dashboards(DashboardNames=["Main"])
    # The alarms watch Lambda Errors > 1 a minute: errors happen, and the sandbox's moto evaluates them as AWS does.
    # In the minute before, this one, and at the call: an alarm evaluates whole periods, and a single
    # datum 5 s back fell on the wrong side of a minute boundary once in CI (the alarm stayed OK).
    now = time.time()
    cw.put_metric_data(Namespace="AWS/Lambda", MetricData=[{"MetricName": "Errors", "Value": 7.0, "Timestamp": at}
                                                           for at in (now - 65, now - 5, now)])
    logs = _client(url, "logs")
    for fn in FUNCTIONS:
        logs.delete_log_group(logGroupName=policy.resources.log_group(fn))
    # The sandbox's moto evaluates alarms once a second in the background (a loaded CI runner: later):
    # the broken run starts once an alarm is in ALARM, as on AWS it would be when someone looks.
    deadline = time.monotonic() + 30.0
    while not cw.describe_alarms(StateValue="ALARM")["MetricAlarms"]:
        assert time.monotonic() < deadline, "no alarm went to ALARM within 30 s of Lambda Errors > 1"
        time.sleep(0.2)  # polling the condition itself, bounded above


def _run_suite(pytester: pytest.Pytester, url: str, moved_at: float, ended_at: float) -> dict[str, str]:
    from pytest_llamadeploy.aws import AwsConfig
    from pytest_llamadeploy.context import StageContext
    from pytest_llamadeploy.sandbox.state import SANDBOX_CREDENTIALS

    context = StageContext(env="sandbox", stage="shift10", release="r2", policy_dir=str(ROOT / "policies"),
                           old_versions={fn: "1" for fn in FUNCTIONS}, new_versions=dict(NEW),
                           traffic_moved_at=moved_at, bake_ended_at=ended_at,
                           aws=AwsConfig("us-east-1", url, max_attempts=1,
                                         credentials=dict(SANDBOX_CREDENTIALS)).to_json())
    path = pytester.path / "context.json"
    context.save(path)
    result = pytester.runpytest_inprocess("-p", "no:llamadeploy", "-p", "no:cacheprovider", "-k", SELECTED,
                                          "suites/monitoring")
    outcomes: dict[str, str] = {}
    for report in result.reprec.getreports("pytest_runtest_logreport"):  # type: ignore[attr-defined]
        if report.when == "call" or report.outcome != "passed":
            name = report.nodeid.split("::")[-1]
            outcomes[name] = report.outcome + (f": {report.longreprtext}" if report.failed else "")
    return outcomes


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[str]:
    """The sandbox's moto server (pytest_llamadeploy.sandbox.moto_server): X-Ray's FilterExpression, as on AWS."""
    from tests.test_frontdoor import Moto

    moto = Moto(tmp_path / "moto")
    try:
        yield moto.url
    finally:
        moto.stop()


def test_the_monitoring_suite_fails_on_a_deleted_dashboard_an_alarm_no_traces_and_no_logs(
        pytester: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llamadeploy.policy import load_policy

    shutil.copytree(ROOT / "suites" / "monitoring", pytester.path / "suites" / "monitoring")
    pytester.makeconftest(CONFTEST)
    monkeypatch.setenv("LLAMA_TEST_CONTEXT", str(pytester.path / "context.json"))
    policy = load_policy(ROOT / "policies", "sandbox").policy
    now = time.time()
    _healthy(aws, policy, now)
    healthy = _run_suite(pytester, aws, now - 60, now + 5)
    expected = ["test_dashboard_has_data[Main]", "test_alarms_exist_enabled_and_quiet",
                "test_xray_traces_of_new_version", "test_logs_of_new_version"]
    assert {name: healthy.get(name, "not run")[:300] for name in expected} == dict.fromkeys(expected, "passed")

    _broken(aws, policy)
    # No traces: a window after every segment the healthy run found (the same X-Ray store, nothing new in it).
    broken = _run_suite(pytester, aws, now + 10, now + 40)
    assert all(broken[name].startswith("failed") for name in expected), broken
    assert "dashboard Main does not exist" in broken["test_dashboard_has_data[Main]"]
    assert all(f"{name}: in ALARM since" in broken["test_alarms_exist_enabled_and_quiet"]
               for name in policy.monitoring.alarms), broken["test_alarms_exist_enabled_and_quiet"]
    for fn in FUNCTIONS:
        assert f"{fn} version 2: no trace matches" in broken["test_xray_traces_of_new_version"]
        assert f"{fn}: log group {policy.resources.log_group(fn)} does not exist" in broken["test_logs_of_new_version"]
