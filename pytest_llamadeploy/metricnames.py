"""CloudWatch vocabulary: AWS's namespaces and metric names, and the service contract's EMF names.

Only names AWS (or docs/service-contract.md) defines live here. The names of a
team's own resources (API, stage, cache group, tables, stack...) come from the
policy's ``resources:`` section; nothing here names a resource. Queries use
full dimension sets (moto's get_metric_data ignores the namespace when
dimensions are given, see MOTO.md).
"""

from __future__ import annotations

LAMBDA = "AWS/Lambda"
APIGATEWAY = "AWS/ApiGateway"
ELASTICACHE = "AWS/ElastiCache"
DYNAMODB = "AWS/DynamoDB"
SQS = "AWS/SQS"

# AWS/Lambda.
LAMBDA_INVOCATIONS = "Invocations"
LAMBDA_ERRORS = "Errors"
LAMBDA_THROTTLES = "Throttles"
LAMBDA_DURATION = "Duration"  # milliseconds

# AWS/ApiGateway, REST APIs (dimensions ApiName; ApiName, Stage).
APIGW_COUNT = "Count"
APIGW_5XX = "5XXError"
APIGW_4XX = "4XXError"
APIGW_LATENCY = "Latency"  # milliseconds
APIGW_INTEGRATION_LATENCY = "IntegrationLatency"

# AWS/ApiGateway, WebSocket APIs (dimensions ApiId; ApiId, Stage; ApiId, Stage, Route).
WS_CONNECT_COUNT = "ConnectCount"
WS_MESSAGE_COUNT = "MessageCount"
WS_INTEGRATION_ERROR = "IntegrationError"
WS_CLIENT_ERROR = "ClientError"
WS_EXECUTION_ERROR = "ExecutionError"
WS_INTEGRATION_LATENCY = "IntegrationLatency"
WS_CONNECT_ROUTE = "$connect"

# AWS/ElastiCache, per cache node (CacheClusterId = <replication group>-NNN).
CACHE_HITS = "CacheHits"
CACHE_MISSES = "CacheMisses"
CACHE_HIT_RATE = "CacheHitRate"  # percent

# AWS/DynamoDB (published only when a request is throttled).
DDB_READ_THROTTLES = "ReadThrottleEvents"
DDB_WRITE_THROTTLES = "WriteThrottleEvents"
DDB_THROTTLED_REQUESTS = "ThrottledRequests"

# The service contract's EMF metrics (docs/service-contract.md), dimensions FunctionName, Version.
SVC_REQUESTS = "Requests"
SVC_5XX = "Responses5xx"
SVC_LATENCY = "Latency"
SVC_WS_CONNECTS = "WsConnects"
SVC_WS_CONNECT_ERRORS = "WsConnectErrors"
SVC_CACHE_HITS = "CacheHits"
SVC_CACHE_MISSES = "CacheMisses"
SVC_DB_TIME = "DbQueryTime"
SVC_EVENTS_TO_DELIVER = "EventsToDeliver"
SVC_EVENTS_DELIVERED = "EventsDelivered"
SVC_EVENT_LATENCY = "EventDeliveryLatency"


def dims(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    """A dimension list as boto3 takes it."""
    return [{"Name": name, "Value": str(value)} for name, value in pairs]


def lambda_version_dims(function: str, alias: str, version: str) -> list[dict[str, str]]:
    """One version's series of invocations through an alias (FunctionName, Resource, ExecutedVersion)."""
    return dims(("FunctionName", function), ("Resource", f"{function}:{alias}"), ("ExecutedVersion", str(version)))


def lambda_alias_dims(function: str, alias: str) -> list[dict[str, str]]:
    """Every invocation through the alias, whichever version ran (FunctionName, Resource)."""
    return dims(("FunctionName", function), ("Resource", f"{function}:{alias}"))


def lambda_qualified_dims(function: str, version: str) -> list[dict[str, str]]:
    """Direct invokes of one version (Qualifier=N): no ExecutedVersion dimension, as on AWS."""
    return dims(("FunctionName", function), ("Resource", f"{function}:{version}"))


def lambda_function_dims(function: str) -> list[dict[str, str]]:
    return dims(("FunctionName", function))


def service_dims(function: str, version: str) -> list[dict[str, str]]:
    """The contract's EMF dimension set: exactly FunctionName and Version."""
    return dims(("FunctionName", function), ("Version", str(version)))


def log_group(function: str) -> str:
    """Lambda's log group of a function."""
    return f"/aws/lambda/{function}"
