"""The runbook's alarms and dashboards, created in the sandbox's moto at ``sandbox up``.

Alarms (names as ``policies/defaults.yaml`` ``monitoring.alarms``), each with an
SNS topic as its action and actions enabled; moto_ext evaluates them every
second. They watch the alias-wide series (Lambda ``FunctionName, Resource``; API
Gateway per API and stage), as production alarms do: a per-version alarm would
have to be recreated at every release. Under fast physics the AWS/* data is per
second, so the alarms use 10-s periods and answer in seconds; under aws physics
it is per minute, so they use 60 s, as on AWS. The 5xx alarm keeps the runbook's
5 minutes either way.

Dashboards: Main, Lambda, WebSocket, Redis, SQS, whose widgets name only series
the sandbox publishes (front door: Lambda, API Gateway, ElastiCache; moto_ext:
SQS queue depth), so "every metric on a dashboard has data" is a fair check.
"""

from __future__ import annotations

import json
from typing import Any

from .. import metricnames as mn
from .provision import ALIAS, NAMES

TOPIC = "llamadeploy-alarms"

ALARM_NAMES = (
    "onchain-lambda-error-rate",
    "onchain-lambda-throttle-rate",
    "onchain-apigw-5xx",
    "onchain-ws-connection-errors",
)
DASHBOARD_NAMES = ("Main", "Lambda", "WebSocket", "Redis", "SQS")


def _stat(query_id: str, namespace: str, metric: str, dims: list[dict[str, str]], period: int,
          stat: str = "Sum") -> dict[str, Any]:
    return {"Id": query_id, "ReturnData": False, "MetricStat": {
        "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": dims},
        "Period": period, "Stat": stat}}


def _rate_alarm(name: str, description: str, namespace: str, dims: list[dict[str, str]], numerator: str,
                denominator: str, denominator_expr: str, extra: list[dict[str, Any]], threshold_pct: float,
                topic: str, period: int) -> dict[str, Any]:
    return {
        "AlarmName": name,
        "AlarmDescription": description,
        "ActionsEnabled": True,
        "AlarmActions": [topic],
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": threshold_pct,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "Metrics": [
            _stat("num", namespace, numerator, dims, period),
            _stat("inv", namespace, denominator, dims, period),
            *extra,
            {"Id": "rate", "Expression": f"100 * num / ({denominator_expr})", "Label": f"{name} (%)",
             "ReturnData": True},
        ],
    }


def alarm_definitions(topic_arn: str, api_function: str = "onchain-api", ws_function: str = "onchain-ws",
                      period: int = 10) -> list[dict[str, Any]]:
    """put_metric_alarm arguments of the runbook's four rollback alarms (``period``: 10 s fast, 60 s aws)."""
    api_dims = mn.lambda_alias_dims(api_function, ALIAS)
    connects = mn.dims(("ApiId", NAMES["ws_api"]), ("Stage", NAMES["ws_stage"]), ("Route", mn.WS_CONNECT_ROUTE))
    return [
        _rate_alarm(ALARM_NAMES[0], "Lambda error rate > 5%", mn.LAMBDA, api_dims, mn.LAMBDA_ERRORS,
                    mn.LAMBDA_INVOCATIONS, "inv", [], 5.0, topic_arn, period),
        _rate_alarm(ALARM_NAMES[1], "Lambda throttle rate > 0.1%", mn.LAMBDA, api_dims, mn.LAMBDA_THROTTLES,
                    mn.LAMBDA_INVOCATIONS, "inv + num", [], 0.1, topic_arn, period),
        {
            "AlarmName": ALARM_NAMES[2],
            "AlarmDescription": "API Gateway 5xx errors > 10 in 5 minutes",
            "ActionsEnabled": True,
            "AlarmActions": [topic_arn],
            "Namespace": mn.APIGATEWAY,
            "MetricName": mn.APIGW_5XX,
            "Dimensions": mn.dims(("ApiName", NAMES["rest_api"]), ("Stage", NAMES["rest_stage"])),
            "Statistic": "Sum",
            "Period": 300,
            "EvaluationPeriods": 1,
            "Threshold": 10.0,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
        _rate_alarm(ALARM_NAMES[3], "WebSocket connection errors > 1%", mn.APIGATEWAY, connects,
                    mn.WS_INTEGRATION_ERROR, mn.WS_CONNECT_COUNT, "inv", [], 1.0, topic_arn, period),
    ]


def _widget(title: str, metrics: list[list[Any]], x: int, y: int) -> dict[str, Any]:
    return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
            "properties": {"title": title, "region": "us-east-1", "view": "timeSeries", "stat": "Sum",
                           "period": 60, "metrics": metrics}}


def _lambda(metric: str, function: str, stat: str = "Sum") -> list[Any]:
    return [mn.LAMBDA, metric, "FunctionName", function, "Resource", f"{function}:{ALIAS}", {"stat": stat}]


def dashboard_bodies(api_function: str = "onchain-api", ws_function: str = "onchain-ws") -> dict[str, dict[str, Any]]:
    """The five dashboards' bodies (CloudWatch dashboard JSON, full metric arrays: no "." shorthand)."""
    apigw = ["ApiName", NAMES["rest_api"], "Stage", NAMES["rest_stage"]]
    ws = ["ApiId", NAMES["ws_api"], "Stage", NAMES["ws_stage"], "Route", mn.WS_CONNECT_ROUTE]
    node = ["CacheClusterId", f"{NAMES['cache_group']}-001"]
    queue = ["QueueName", NAMES["alerts_queue"]]
    return {
        "Main": {"widgets": [
            _widget("API requests and 5xx", [[mn.APIGATEWAY, mn.APIGW_COUNT, *apigw],
                                             [mn.APIGATEWAY, mn.APIGW_5XX, *apigw]], 0, 0),
            _widget("API latency", [[mn.APIGATEWAY, mn.APIGW_LATENCY, *apigw, {"stat": "p95"}]], 12, 0),
            _widget("Lambda errors", [_lambda(mn.LAMBDA_INVOCATIONS, api_function),
                                      _lambda(mn.LAMBDA_ERRORS, api_function)], 0, 6),
        ]},
        "Lambda": {"widgets": [
            _widget(f"{fn} invocations and errors", [_lambda(mn.LAMBDA_INVOCATIONS, fn), _lambda(mn.LAMBDA_ERRORS, fn)],
                    0, 6 * i)
            for i, fn in enumerate((api_function, ws_function))
        ] + [
            _widget(f"{fn} duration p95", [_lambda(mn.LAMBDA_DURATION, fn, "p95")], 12, 6 * i)
            for i, fn in enumerate((api_function, ws_function))
        ]},
        "WebSocket": {"widgets": [
            _widget("WebSocket connects", [[mn.APIGATEWAY, mn.WS_CONNECT_COUNT, *ws]], 0, 0),
            _widget("$connect integration errors", [[mn.APIGATEWAY, mn.WS_INTEGRATION_ERROR, *ws]], 12, 0),
        ]},
        "Redis": {"widgets": [
            _widget("Cache hits and misses", [[mn.ELASTICACHE, mn.CACHE_HITS, *node],
                                              [mn.ELASTICACHE, mn.CACHE_MISSES, *node]], 0, 0),
        ]},
        "SQS": {"widgets": [
            _widget("Alerts queue depth", [
                [mn.SQS, "ApproximateNumberOfMessagesVisible", *queue, {"stat": "Maximum"}],
                [mn.SQS, "ApproximateNumberOfMessagesNotVisible", *queue, {"stat": "Maximum"}],
            ], 0, 0),
        ]},
    }


def provision(aws_config: Any, state: Any = None) -> dict[str, Any]:
    """Create the SNS topic, the 4 alarms and the 5 dashboards (idempotent); returns what was made."""
    sns = aws_config.client("sns")
    cloudwatch = aws_config.client("cloudwatch")
    topic_arn = sns.create_topic(Name=TOPIC)["TopicArn"]
    resolution = 60 if ((getattr(state, "extra", None) or {}).get("physics") or {}).get("name") == "aws" else 10
    alarms = alarm_definitions(topic_arn, period=resolution)
    for alarm in alarms:
        cloudwatch.put_metric_alarm(**alarm)
    bodies = dashboard_bodies()
    for name, body in bodies.items():
        cloudwatch.put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    return {"topic_arn": topic_arn, "alarms": [a["AlarmName"] for a in alarms], "dashboards": list(bodies)}
