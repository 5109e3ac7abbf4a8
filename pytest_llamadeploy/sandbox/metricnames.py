"""Exactly what the sandbox's front door publishes to moto, for the metrics work to query.

Names and dimension builders come from :mod:`pytest_llamadeploy.metricnames`
(AWS's real names); this module writes down which series exist in the sandbox,
with which dimension sets, and how AWS's semantics were mapped. Every series
is published each second (``StorageResolution=1``) for the seconds in which it
has activity; a query must use the full dimension set (moto's
get_metric_data ignores the namespace when dimensions are given).

Semantics (as real Lambda + API Gateway, with the sandbox's simplifications):

* An **alias-routed** request (no ``x-llama-version`` header) of version N of
  function F is in ``AWS/Lambda`` under
  ``[FunctionName=F, Resource=F:live, ExecutedVersion=N]``, under
  ``[FunctionName=F, Resource=F:live]`` and under ``[FunctionName=F]``; and in
  ``AWS/ApiGateway`` under ``[ApiName=onchain-api]``.
* A **version-targeted** request (header ``x-llama-version: N``) plays a direct
  Lambda invoke with ``Qualifier=N`` (what the health suite and the bake
  watch's probes do, as CodeDeploy PreTraffic hooks do on AWS): it is under
  ``[FunctionName=F, Resource=F:N]`` and ``[FunctionName=F]`` only. It is
  *not* in the alias series nor in API Gateway, so probes never count twice
  (the watch counts its own probe results).
* ``Invocations`` excludes throttled requests, as on AWS: a backend 429 is a
  ``Throttles`` datapoint only. A throttle rate is therefore
  ``Throttles / (Invocations + Throttles)``.
* ``Errors`` counts backend 5xx answers and unreachable backends (front door
  502). (On AWS a proxy-integration function returning ``statusCode: 500`` is
  not a Lambda error; the sandbox counts it so that the ``error_rate`` knob is
  seen as the runbook's "Lambda error rate".)
* ``Duration`` is the backend's time in ms, published as a values list
  (``Values``/``Counts``), so percentiles can be computed per version.
  ``AWS/ApiGateway Latency`` is the whole front-door time in ms.
* WebSocket: a new connection runs the ``$connect`` route, served by
  ``onchain-ws``. Per version, a connect attempt is an ``onchain-ws``
  Invocation and a failed connect (backend refused the handshake, closed
  before its first message, or was unreachable) an ``onchain-ws`` Error, with
  the same dimension sets as above. The same counts are also published as
  ``LlamaDeploy/WebSocket`` ``ConnectAttempts`` / ``ConnectErrors`` with the
  per-version Lambda dimensions (names that say what they are), and the API
  total as ``AWS/ApiGateway ConnectCount [ApiId=onchain-ws, Stage=live]``
  (successful connects, as AWS counts them).
* ``AWS/ElastiCache [CacheClusterId=onchain-redis]``: ``CacheHits``,
  ``CacheMisses`` (Sum: deltas of the real Redis ``INFO stats``
  ``keyspace_hits``/``keyspace_misses`` over the second) and ``CacheHitRate``
  (percent, only in seconds with lookups).
* ``AWS/DynamoDB [TableName=onchain-alerts]``: ``ReadThrottleEvents``,
  ``WriteThrottleEvents`` and ``ThrottledRequests``, 0 every second: the
  sandbox's DynamoDB is moto, which never throttles, and publishing the true
  0 lets "DynamoDB throttling = 0" be checked on data rather than on absence.
"""

from __future__ import annotations

from .. import metricnames as m

LAMBDA_ALIAS = "live"
#: Namespace of the explicit WebSocket connect series (not an AWS namespace).
WEBSOCKET = "LlamaDeploy/WebSocket"
WS_CONNECT_ATTEMPTS = "ConnectAttempts"
WS_CONNECT_ERRORS = "ConnectErrors"
DDB_THROTTLED_REQUESTS = "ThrottledRequests"
CACHE_HIT_RATE = "CacheHitRate"  # percent

#: Metrics published per function and version (namespace AWS/Lambda).
LAMBDA_METRICS = (m.LAMBDA_INVOCATIONS, m.LAMBDA_ERRORS, m.LAMBDA_THROTTLES, m.LAMBDA_DURATION)
APIGW_METRICS = (m.APIGW_COUNT, m.APIGW_5XX, m.APIGW_4XX, m.APIGW_LATENCY)


def lambda_alias_dims(function: str, alias: str = LAMBDA_ALIAS) -> list[dict[str, str]]:
    return [{"Name": "FunctionName", "Value": function}, {"Name": "Resource", "Value": f"{function}:{alias}"}]


def lambda_qualified_dims(function: str, version: str) -> list[dict[str, str]]:
    """A direct invoke of one version (Qualifier=N): no ExecutedVersion dimension, as on AWS."""
    return [{"Name": "FunctionName", "Value": function}, {"Name": "Resource", "Value": f"{function}:{version}"}]


#: The dimension sets, by namespace, as (description, builder). For humans and tests.
DIMENSION_SETS: dict[str, list[str]] = {
    m.LAMBDA: [
        "FunctionName, Resource=<fn>:live, ExecutedVersion=<N>  (alias-routed, per version)",
        "FunctionName, Resource=<fn>:live                       (alias total)",
        "FunctionName, Resource=<fn>:<N>                        (version-targeted)",
        "FunctionName                                           (everything)",
    ],
    m.APIGATEWAY: [
        f"ApiName={m.REST_API_NAME}  (Count, 5XXError, 4XXError, Latency)",
        f"ApiId={m.WS_API_ID}, Stage=live  (ConnectCount)",
    ],
    WEBSOCKET: ["FunctionName, Resource=<fn>:live, ExecutedVersion=<N>  (ConnectAttempts, ConnectErrors)"],
    m.ELASTICACHE: [f"CacheClusterId={m.CACHE_CLUSTER_ID}  (CacheHits, CacheMisses, CacheHitRate)"],
    m.DYNAMODB: [f"TableName={m.DDB_TABLE}  (ReadThrottleEvents, WriteThrottleEvents, ThrottledRequests)"],
}


def log_group(function: str) -> str:
    return f"/aws/lambda/{function}"
