"""CloudWatch names and dimension sets: the one place that spells them.

These are AWS's real names. The sandbox's front door publishes exactly these
series, and the gate queries exactly these, so the gate's code is the same for
AWS and the sandbox. (moto's get_metric_data ignores the namespace when
dimensions are given, see MOTO.md, so every query uses the full dimension set.)
"""

from __future__ import annotations

LAMBDA = "AWS/Lambda"
APIGATEWAY = "AWS/ApiGateway"
ELASTICACHE = "AWS/ElastiCache"
DYNAMODB = "AWS/DynamoDB"
SQS = "AWS/SQS"

# AWS/Lambda, per alias invocation: what real Lambda publishes with ExecutedVersion.
LAMBDA_INVOCATIONS = "Invocations"
LAMBDA_ERRORS = "Errors"
LAMBDA_THROTTLES = "Throttles"
LAMBDA_DURATION = "Duration"  # milliseconds


def lambda_version_dims(function: str, alias: str, version: str) -> list[dict[str, str]]:
    """Dimensions of a per-version series of an alias invocation (FunctionName, Resource, ExecutedVersion)."""
    return [
        {"Name": "FunctionName", "Value": function},
        {"Name": "Resource", "Value": f"{function}:{alias}"},
        {"Name": "ExecutedVersion", "Value": str(version)},
    ]


def lambda_function_dims(function: str) -> list[dict[str, str]]:
    return [{"Name": "FunctionName", "Value": function}]


# AWS/ApiGateway, REST API (the onchain-api function's front).
APIGW_COUNT = "Count"
APIGW_5XX = "5XXError"
APIGW_4XX = "4XXError"
APIGW_LATENCY = "Latency"  # milliseconds
REST_API_NAME = "onchain-api"


def apigw_rest_dims(api_name: str = REST_API_NAME) -> list[dict[str, str]]:
    return [{"Name": "ApiName", "Value": api_name}]


# WebSocket: the $connect route is served by the onchain-ws function, so per-version
# connect attempts and connect errors are that function's Invocations and Errors
# (AWS/Lambda, dims above). API-level totals are API Gateway's ConnectCount.
WS_CONNECT_COUNT = "ConnectCount"
WS_API_ID = "onchain-ws"


def apigw_ws_dims(api_id: str = WS_API_ID, stage: str = "live") -> list[dict[str, str]]:
    return [{"Name": "ApiId", "Value": api_id}, {"Name": "Stage", "Value": stage}]


# AWS/ElastiCache: hit rate = CacheHits / (CacheHits + CacheMisses).
CACHE_HITS = "CacheHits"
CACHE_MISSES = "CacheMisses"
CACHE_CLUSTER_ID = "onchain-redis"


def elasticache_dims(cluster: str = CACHE_CLUSTER_ID) -> list[dict[str, str]]:
    return [{"Name": "CacheClusterId", "Value": cluster}]


# AWS/DynamoDB: throttling = ReadThrottleEvents + WriteThrottleEvents.
DDB_READ_THROTTLES = "ReadThrottleEvents"
DDB_WRITE_THROTTLES = "WriteThrottleEvents"
DDB_TABLE = "onchain-alerts"


def dynamodb_dims(table: str = DDB_TABLE) -> list[dict[str, str]]:
    return [{"Name": "TableName", "Value": table}]


# Names the sandbox gives the rest of the system (provisioned at `sandbox up`).
SQS_ALERTS_QUEUE = "onchain-alerts"
RDS_INSTANCE = "defillama"
STACK_NAME = "onchain-services"
