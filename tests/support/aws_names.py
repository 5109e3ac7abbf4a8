"""The account a policy's ``resources:`` names, created in moto; and the series its rules read, published.

``provision_names`` returns the WebSocket API's id: AWS (and moto) generate it, so a
test's policy names it with ``names_yaml(ws_api_id)``, as a user's policy does.
"""

from __future__ import annotations

import json
from typing import Any

from pytest_llamadeploy.metrics.signals import get_signal, namespace_of
from pytest_llamadeploy.ops.proven import wanted_series


def provision_names(aws: Any, policy: Any, *, skip: tuple[str, ...] = ()) -> str:
    """Create every resource ``policy.resources`` names except the keys in ``skip``; return the WebSocket API id."""
    r = policy.resources
    apigw = aws.client("apigateway")
    if "rest_api" not in skip:
        api = apigw.create_rest_api(name=r.rest_api)["id"]
        root = apigw.get_resources(restApiId=api)["items"][0]["id"]
        apigw.put_method(restApiId=api, resourceId=root, httpMethod="GET", authorizationType="NONE")
        apigw.put_integration(restApiId=api, resourceId=root, httpMethod="GET", type="MOCK")
        apigw.create_deployment(restApiId=api, stageName=r.rest_stage)
    ws = aws.client("apigatewayv2")
    ws_id = ws.create_api(Name="ws", ProtocolType="WEBSOCKET", RouteSelectionExpression="$request.body.action")["ApiId"]
    ws.create_stage(ApiId=ws_id, StageName=r.ws_stage)
    if "cache_group" not in skip:
        aws.client("elasticache").create_replication_group(
            ReplicationGroupId=r.cache_group, ReplicationGroupDescription="test", Engine="redis",
            CacheNodeType="cache.t3.micro", NumCacheClusters=r.cache_nodes)
    ddb = aws.client("dynamodb")
    for table in r.dynamodb_tables:
        if f"table:{table}" not in skip:
            ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                             BillingMode="PAY_PER_REQUEST")
    cfn = aws.client("cloudformation")
    try:
        cfn.describe_stacks(StackName=r.stack)
    except Exception:  # not made by the test's own fixture yet
        cfn.create_stack(StackName=r.stack, TemplateBody=json.dumps(
            {"Resources": {"T": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "stack-topic"}}}}))
    aws.client("sns").create_topic(Name=r.sns_topic)
    aws.client("sns").create_topic(Name=r.alerts_topic)
    aws.client("sqs").create_queue(QueueName=r.alerts_queue)
    logs = aws.client("logs")
    for function in policy.service.functions:
        group = r.log_group(function)
        if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
            logs.create_log_group(logGroupName=group)
    return str(ws_id)


def names_yaml(ws_api_id: str) -> str:
    return f"resources:\n  ws_api_id: {ws_api_id}\n"


def publish_series(aws: Any, policy: Any, *, skip_signals: tuple[str, ...] = ()) -> int:
    """One datapoint on every series the policy's rules read (the EMF ones under Version=1); returns how many."""
    cw = aws.client("cloudwatch")
    seen: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    for rule in [*policy.key_metrics.values(), *policy.rollback_triggers.values()]:
        if rule.signal in skip_signals:
            continue
        signal = get_signal(rule.signal)
        namespace = namespace_of(signal, policy)
        for metric, dims in wanted_series(signal, policy):
            full = dims + ((("Version", "1"),) if signal.source == "service" and signal.scope != "global" else ())
            if (namespace, metric, full) in seen:
                continue
            seen.add((namespace, metric, full))
            cw.put_metric_data(Namespace=namespace, MetricData=[{
                "MetricName": metric, "Value": 1.0, "Dimensions": [{"Name": n, "Value": v} for n, v in full]}])
    return len(seen)
