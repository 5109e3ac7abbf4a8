"""Monitoring gate: the runbook's six key metrics per version, then its monitoring verification.

At the end of the bake (window: ``llama.bake_window()``):
- each key metric of the policy, per version that served (own test per metric);
- the dashboards exist and every metric on them has data in the window;
- the alarms exist, have actions enabled, none in ALARM, none in
  INSUFFICIENT_DATA for longer than ``monitoring.insufficient_data_grace``;
- X-Ray holds traces of each new version in the window: the service's X-Ray
  service name and the ``function_version`` annotation docs/service-contract.md
  requires (Lambda writes no version annotation itself). Asked with a
  FilterExpression, as on AWS, and checked on the client too (moto ignores it);
- CloudWatch Logs streams of the new version (``YYYY/MM/DD/[N]id``) have events
  in the window.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from pytest_llamadeploy.metrics.evaluate import serving_versions

#: The annotation docs/service-contract.md requires on every trace: the function's version.
TRACE_VERSION = "function_version"


def test_key_metric(llama: Any, key_metric: str, key_metric_results: list[Any], record_property: Any) -> None:
    results = [r for r in key_metric_results if r.rule == key_metric]
    assert results, f"key metric {key_metric}: nothing evaluated (no version or function in the stage context)"
    for r in results:
        record_property(f"{r.version}:{r.function or 'service'}", r.value)
        print(r.message)
    bad = [r for r in results if r.verdict != "pass"]
    assert not bad, "\n".join(r.message for r in bad)


def _window(llama: Any) -> tuple[float, float]:
    start, end = llama.bake_window()
    return start, max(end, start + 1.0)


def test_dashboard_has_data(llama: Any, dashboard: str) -> None:
    from botocore.exceptions import ClientError

    from pytest_llamadeploy.metrics.dashboards import dashboard_series
    from pytest_llamadeploy.metrics.evaluate import fetch_with_retry
    from pytest_llamadeploy.metrics.query import valid_period

    cw = llama.client("cloudwatch")
    try:
        body = json.loads(cw.get_dashboard(DashboardName=dashboard)["DashboardBody"])
    except ClientError as exc:
        # By code: botocore maps "ResourceNotFound" to one of two modeled classes (DashboardNotFoundError
        # shares it), and the JSON protocol may answer "ResourceNotFoundException".
        if exc.response.get("Error", {}).get("Code") not in ("ResourceNotFound", "ResourceNotFoundException"):
            raise
        pytest.fail(f"dashboard {dashboard} does not exist (policy monitoring.dashboards); create it", pytrace=False)
    start, end = _window(llama)
    # At least a minute: a dashboard shows standard-resolution metrics too (SQS, and every AWS/*
    # metric on AWS), which answer no sub-minute period (../shared/AWS.md).
    specs = dashboard_series(dashboard, body, max(60, valid_period(end - start)))
    assert specs, f"dashboard {dashboard} shows no metric widget"
    data = fetch_with_retry(cw, specs, start, end)
    empty = [f"{s.namespace} {s.metric} {dict(s.dims)} ({s.stat})" for s in specs if not data[s]]
    assert not empty, (f"dashboard {dashboard}: {len(empty)} of {len(specs)} metrics have no data between "
                       f"{_iso(start)} and {_iso(end)}: " + "; ".join(empty))


def test_alarms_exist_enabled_and_quiet(llama: Any) -> None:
    policy = llama.policy
    names = list(policy.monitoring.alarms)
    if not names:
        pytest.skip("policy monitoring.alarms lists no alarm")
    cw = llama.client("cloudwatch")
    found = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNames=names)["MetricAlarms"]}
    problems = [f"{n}: missing" for n in names if n not in found]
    grace = policy.monitoring.insufficient_data_grace
    now = time.time()
    for name, alarm in found.items():
        if not alarm.get("ActionsEnabled") or not alarm.get("AlarmActions"):
            problems.append(f"{name}: actions disabled or no alarm action")
        state = alarm["StateValue"]
        since = alarm["StateUpdatedTimestamp"].timestamp()
        if state == "ALARM":
            problems.append(f"{name}: in ALARM since {_iso(since)}: {alarm.get('StateReason', '')}")
        elif state == "INSUFFICIENT_DATA" and now - since > grace:
            problems.append(f"{name}: INSUFFICIENT_DATA for {now - since:.0f}s (> grace {grace:g}s, policy "
                            f"monitoring.insufficient_data_grace): {alarm.get('StateReason', '')}")
    assert not problems, "alarms: " + "; ".join(problems)


def _annotations(segment: dict[str, Any]) -> list[dict[str, Any]]:
    found = [segment.get("annotations") or {}]
    for sub in segment.get("subsegments") or []:
        found += _annotations(sub)
    return found


def test_xray_traces_of_new_version(llama: Any) -> None:
    if not llama.policy.monitoring.require_traces:
        pytest.skip("policy monitoring.require_traces is false")
    new = serving_versions(llama)["new"]
    xray = llama.client("xray")
    start, end = _window(llama)
    problems = []
    for fn, version in new.items():
        name = llama.policy.resources.xray_service if fn == llama.api_function else fn
        expression = f'service("{name}") AND annotation.{TRACE_VERSION} = "{version}"'
        ids: list[str] = []
        kwargs: dict[str, Any] = {"StartTime": _dt(start), "EndTime": _dt(end), "FilterExpression": expression}
        while True:
            page = xray.get_trace_summaries(**kwargs)
            ids += [s["Id"] for s in page.get("TraceSummaries", [])]
            if not page.get("NextToken") or len(ids) >= 500:
                break
            kwargs["NextToken"] = page["NextToken"]
        found = 0
        for i in range(0, len(ids), 5):
            for trace in xray.batch_get_traces(TraceIds=ids[i:i + 5]).get("Traces", []):
                for seg in trace.get("Segments", []):
                    doc = json.loads(seg["Document"])
                    if doc.get("name") == name and any(str(a.get(TRACE_VERSION)) == str(version)
                                                       for a in _annotations(doc)):
                        found += 1
        if not found:
            problems.append(f"{fn} version {version}: no trace matches {expression!r} ({len(ids)} summaries "
                            "returned); the function must annotate its traces (docs/service-contract.md)")
    assert not problems, f"X-Ray between {_iso(start)} and {_iso(end)}: " + "; ".join(problems)


def test_logs_of_new_version(llama: Any) -> None:
    policy = llama.policy
    if not policy.monitoring.require_logs:
        pytest.skip("policy monitoring.require_logs is false")
    new = serving_versions(llama)["new"]
    logs = llama.client("logs")
    start, end = _window(llama)
    problems = []
    for fn, version in new.items():
        group = policy.resources.log_group(fn)
        marker = f"[{version}]"
        try:
            streams = logs.describe_log_streams(logGroupName=group, orderBy="LastEventTime",
                                               descending=True)["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            problems.append(f"{fn}: log group {group} does not exist")
            continue
        names = [s["logStreamName"] for s in streams if marker in s["logStreamName"]]
        events = 0
        for name in names:
            got = logs.get_log_events(logGroupName=group, logStreamName=name, startTime=int(start * 1000),
                                      endTime=int(end * 1000) + 1000, startFromHead=True)
            events += len(got.get("events", []))
        if not events:
            problems.append(f"{fn} version {version}: {len(names)} streams named {marker} in {group}, "
                            f"no event between {_iso(start)} and {_iso(end)}")
    assert not problems, "CloudWatch Logs: " + "; ".join(problems)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _iso(epoch: float) -> str:
    return _dt(epoch).strftime("%H:%M:%S")
