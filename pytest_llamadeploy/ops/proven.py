"""Every AWS name the policy gives, proven to exist; every series its rules read, proven to be published.

Run by ``llamadeploy doctor`` and by the preflight stage. A misspelt name does
not fail loudly on AWS: CloudWatch answers a query for a series that does not
exist with no data, and a rule that passes on no data (``no_data: pass``) then
passes forever (CodeDeploy's INSUFFICIENT_DATA trap). So:

- each name of ``resources:`` is looked up with the service's Describe/Get/List
  call (``missing_resources``; the X-Ray service name is the monitoring suite's to
  find, in the traces themselves);
- each series a rule or key metric reads is looked up with CloudWatch
  ListMetrics, which lists only series that received data in the last two
  weeks (../shared/AWS.md). A missing series is a finding; a ``no_data: pass``
  rule whose own series is missing cannot be trusted at all, and the stage is
  refused (``unprovable_no_data_pass``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..metrics.signals import functions_of, get_signal, namespace_of
from .results import Finding

#: The runbook's resolution for a name that does not exist (Troubleshooting, "Deployment fails").
NAME_RESOLUTION = [
    "Check AWS credentials and region: `aws sts get-caller-identity` (the names are looked up in policy aws.region)",
    "Correct the name under `resources:` in the env's policy file (llamadeploy policy show --env ENV shows the merged value)",
]
SERIES_RESOLUTION = [
    "A series exists only once data was published to it in the last two weeks (CloudWatch ListMetrics): "
    "check the names under `resources:`, service.functions and metrics.service.namespace",
    "For the functions' own metrics, check the functions write the EMF lines of docs/service-contract.md",
]


@dataclass(frozen=True)
class Missing:
    """One thing the policy names that AWS does not have."""

    key: str
    what: str

    def __str__(self) -> str:
        return f"{self.key}: {self.what}"


def _paged(call: Callable[..., dict[str, Any]], key: str, token: str, **kwargs: Any) -> list[Any]:
    """Every item of a paged List/Get call (``token``: the name the service gives its page marker)."""
    items: list[Any] = []
    while True:
        page = call(**kwargs)
        items += page.get(key, [])
        if not page.get(token):
            return items
        kwargs[token] = page[token]


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    # SQS says QueueDoesNotExist (JSON protocol) or AWS.SimpleQueueService.NonExistentQueue (query protocol);
    # CloudFormation answers a missing stack with ValidationError.
    return any(word in code for word in ("NotFound", "NonExistent", "DoesNotExist")) or code == "ValidationError"


def _lookup(key: str, what: str, probe: Callable[[], bool]) -> Missing | None:
    """``probe()`` True: found. False, or a not-found error: missing. Any other error propagates (no verdict)."""
    try:
        return None if probe() else Missing(key, what)
    except Exception as exc:
        if _not_found(exc):
            return Missing(key, what)
        raise


def missing_resources(aws: Any, policy: Any) -> list[Missing]:
    """Each ``resources:`` name that AWS does not have, with the call that looked for it."""
    r = policy.resources
    apigw, apigw2 = aws.client("apigateway"), aws.client("apigatewayv2")
    missing: list[Missing | None] = []

    rest_ids = [a["id"] for a in _paged(apigw.get_rest_apis, "items", "position", limit=500) if a.get("name") == r.rest_api]
    if not rest_ids:
        missing.append(Missing("resources.rest_api", f"REST API named {r.rest_api!r} not found (apigateway GetRestApis)"))
    elif not any(_stage_exists(apigw, i, r.rest_stage) for i in rest_ids):
        missing.append(Missing("resources.rest_stage", f"REST API {r.rest_api!r} has no stage {r.rest_stage!r} "
                                                       "(apigateway GetStage)"))
    ws = _lookup("resources.ws_api_id", f"WebSocket API id {r.ws_api_id!r} not found (apigatewayv2 GetApi)",
                 lambda: bool(apigw2.get_api(ApiId=r.ws_api_id)))
    missing.append(ws)
    if ws is None:
        missing.append(_lookup("resources.ws_stage", f"WebSocket API {r.ws_api_id!r} has no stage {r.ws_stage!r} "
                               "(apigatewayv2 GetStage)",
                               lambda: bool(apigw2.get_stage(ApiId=r.ws_api_id, StageName=r.ws_stage))))
    cache = aws.client("elasticache")
    group = _lookup("resources.cache_group", f"ElastiCache replication group {r.cache_group!r} not found "
                    "(elasticache DescribeReplicationGroups)",
                    lambda: bool(cache.describe_replication_groups(ReplicationGroupId=r.cache_group)
                                 ["ReplicationGroups"]))
    missing.append(group)
    ddb = aws.client("dynamodb")
    for table in r.dynamodb_tables:
        missing.append(_lookup("resources.dynamodb_tables", f"DynamoDB table {table!r} not found "
                               "(dynamodb DescribeTable)", partial(_table_exists, ddb, table)))
    cfn = aws.client("cloudformation")
    missing.append(_lookup("resources.stack", f"CloudFormation stack {r.stack!r} not found "
                           "(cloudformation DescribeStacks)",
                           lambda: bool(cfn.describe_stacks(StackName=r.stack)["Stacks"])))
    topics = {t["TopicArn"].rsplit(":", 1)[-1] for t in _paged(aws.client("sns").list_topics, "Topics", "NextToken")}
    for key, topic in (("resources.sns_topic", r.sns_topic), ("resources.alerts_topic", r.alerts_topic)):
        if topic not in topics:
            missing.append(Missing(key, f"SNS topic {topic!r} not found (sns ListTopics)"))
    sqs = aws.client("sqs")
    missing.append(_lookup("resources.alerts_queue", f"SQS queue {r.alerts_queue!r} not found (sqs GetQueueUrl)",
                           lambda: bool(sqs.get_queue_url(QueueName=r.alerts_queue)["QueueUrl"])))
    logs = aws.client("logs")
    for function in policy.service.functions:
        group_name = r.log_group(function)
        found = logs.describe_log_groups(logGroupNamePrefix=group_name).get("logGroups", [])
        if not any(g["logGroupName"] == group_name for g in found):
            key = f"resources.log_groups.{function}"
            missing.append(Missing(key, f"log group {group_name!r} of {function} not found (logs DescribeLogGroups)"))
    return [m for m in missing if m is not None]


def _table_exists(ddb: Any, table: str) -> bool:
    return bool(ddb.describe_table(TableName=table))


def _stage_exists(apigw: Any, api_id: str, stage: str) -> bool:
    return _lookup("", "", lambda: bool(apigw.get_stage(restApiId=api_id, stageName=stage))) is None


@dataclass(frozen=True)
class RuleSeries:
    """The series one rule reads, and which of them ListMetrics does not list."""

    where: str  # key_metrics.error_rate
    no_data: str
    wanted: tuple[str, ...]
    missing: tuple[str, ...]


def _describe(namespace: str, metric: str, dims: tuple[tuple[str, str], ...]) -> str:
    return f"{namespace} {metric} {{{', '.join(f'{n}={v}' for n, v in dims)}}}"


def wanted_series(signal: Any, policy: Any) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """(metric, dimension filter) for each series a signal's value needs, whatever the version."""
    names = list(dict.fromkeys(signal.numerator + signal.denominator + signal.samples))
    if signal.scope == "global":
        assert signal.global_dims is not None
        dim_sets = list(signal.global_dims(policy.resources))
    elif signal.source == "service":  # per version; any version of the function proves the series
        dim_sets = [(("FunctionName", fn),) for fn in functions_of(signal, policy.service)]
    else:
        alias = policy.service.alias
        dim_sets = [(("FunctionName", fn), ("Resource", f"{fn}:{alias}")) for fn in functions_of(signal, policy.service)]
    return [(name, dims) for dims in dim_sets for name in names]


def rule_series(cloudwatch: Any, policy: Any) -> list[RuleSeries]:
    """For each key metric and rollback trigger: the series it reads and those ListMetrics does not list."""
    listed: dict[tuple[str, str, tuple[tuple[str, str], ...]], bool] = {}
    out = []
    for section in ("key_metrics", "rollback_triggers"):
        for name, rule in getattr(policy, section).items():
            signal = get_signal(rule.signal, f"{section}.{name}.signal", policy)
            if signal.provider != "cloudwatch" or signal.dims_template:
                continue  # ListMetrics proves CloudWatch's built-in series only; a custom source proves its own
            namespace = namespace_of(signal, policy)
            wanted, missing = [], []
            for metric, dims in wanted_series(signal, policy):
                text = _describe(namespace, metric, dims)
                wanted.append(text)
                key = (namespace, metric, dims)
                if key not in listed:  # rules share series: one ListMetrics each
                    found = cloudwatch.list_metrics(Namespace=namespace, MetricName=metric,
                                                    Dimensions=[{"Name": n, "Value": v} for n, v in dims])
                    listed[key] = bool(found.get("Metrics"))
                if not listed[key]:
                    missing.append(text)
            out.append(RuleSeries(f"{section}.{name}", rule.no_data, tuple(wanted), tuple(missing)))
    return out


def unprovable_no_data_pass(series: list[RuleSeries]) -> list[str]:
    """The ``no_data: pass`` rules whose series ListMetrics does not list: such a rule passes on a misspelt name."""
    return [f"{s.where} has no_data: pass but CloudWatch lists none of {'; '.join(s.missing)} "
            "(ListMetrics): the rule would pass on a name that does not exist. Fix the name under resources:, "
            "or set no_data: wait (or fail) until the series has been published"
            for s in series if s.no_data == "pass" and s.missing]


def check_names(aws: Any, policy: Any) -> Finding:
    """Doctor's finding for ``resources:``."""
    try:
        missing = missing_resources(aws, policy)
    except Exception as exc:
        return Finding("aws_names", False, f"could not look the names up: {type(exc).__name__}: {exc}"[:400],
                       NAME_RESOLUTION)
    if missing:
        return Finding("aws_names", False, "; ".join(map(str, missing)), NAME_RESOLUTION)
    return Finding("aws_names", True, f"every name under resources: exists ({_summary(policy)})")


def check_series(aws: Any, policy: Any) -> Finding:
    """Doctor's finding for the series of every rule and key metric."""
    try:
        series = rule_series(aws.client("cloudwatch"), policy)
    except Exception as exc:
        return Finding("metric_series", False, f"could not list metrics: {type(exc).__name__}: {exc}"[:400],
                       SERIES_RESOLUTION)
    refused = unprovable_no_data_pass(series)
    missing = [f"{s.where} needs {'; '.join(s.missing)}" for s in series if s.missing and s.no_data != "pass"]
    if refused or missing:
        return Finding("metric_series", False, "; ".join(refused + missing), SERIES_RESOLUTION)
    return Finding("metric_series", True, f"{len({w for s in series for w in s.wanted})} series of {len(series)} rules "
                   "listed by CloudWatch")


def _summary(policy: Any) -> str:
    r = policy.resources
    return (f"REST API {r.rest_api}/{r.rest_stage}, WebSocket API {r.ws_api_id}/{r.ws_stage}, cache group "
            f"{r.cache_group}, tables {', '.join(r.dynamodb_tables)}, stack {r.stack}, topics {r.sns_topic} and "
            f"{r.alerts_topic}, "
            f"queue {r.alerts_queue}, log groups of {', '.join(policy.service.functions)}")
