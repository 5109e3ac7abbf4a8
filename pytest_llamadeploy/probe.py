"""Probes of the service: through a stage's URL, or of one Lambda version directly.

Used by the health suite and by the bake watch. A version is reached by
invoking it (``Qualifier=N``) with an API Gateway proxy event, as CodeDeploy
PreTraffic hooks do, since API Gateway cannot address a version: on AWS and in
the sandbox alike (the sandbox's Lambda endpoint is its front door, which runs
the release and answers as Lambda's Invoke API does). A URL probe goes through
API Gateway: the live stage (what users get) or the preview stage (the release
under test, whatever its share of traffic).

Every probe returns a :class:`ProbeResult` (never raises for what it probes),
whose ``describe()`` says what was probed, where (secrets redacted) and what
came back, with the latency. A Lambda throttle (``TooManyRequestsException``
from Invoke) is ``throttled``; an application's own HTTP 429 is an answer like
any other, and fails a probe that expects 200.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .redact import redact
from .targets import ResolvedTargets

RELEASE_HEADER = "x-llama-release"
DEFAULT_TIMEOUT = 5.0
DEFAULT_API_FUNCTION = "onchain-api"
DEFAULT_WS_FUNCTION = "onchain-ws"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None
    latency_ms: float
    release: str | None
    error: str | None
    target_description: str
    #: Parsed JSON body (HTTP) or first message (WebSocket), when there was one.
    body: Any = None
    #: The Lambda version that served, when known (the stage's header / Invoke's ExecutedVersion).
    version: str | None = None
    #: Lambda refused the invocation for concurrency (TooManyRequestsException): a throttle, not an answer.
    throttled: bool = False
    #: The answer's headers, lower-cased (``x-cache`` tells a cached read from a database read).
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        got = f"HTTP {self.status}" if self.status is not None else "no answer"
        if self.error:
            got += f": {self.error}"
        if self.body is not None:
            got += f"{'; body' if self.error else ':'} {_short(self.body)}"
        served = f", release {self.release}" if self.release else ""
        served += f", version {self.version}" if self.version else ""
        return redact(f"{self.target_description} -> {got} ({self.latency_ms:.1f} ms{served})")


def _short(body: Any, limit: int = 300) -> str:
    text = body if isinstance(body, str) else json.dumps(body, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _where(url: str) -> str:
    return redact(url)


# -- HTTP -------------------------------------------------------------------------------
def probe_http(targets: ResolvedTargets, path: str = "/health", version: str | None = None,
               timeout: float = DEFAULT_TIMEOUT, *, method: str = "GET", headers: dict[str, str] | None = None,
               expect_status: int | tuple[int, ...] = 200, function: str = DEFAULT_API_FUNCTION,
               lambda_client: Any = None, url_key: str = "api_url", body: str | None = None) -> ProbeResult:
    """One HTTP request through a stage (``url_key``: api_url or preview_api_url), or an invoke of ``version``."""
    if not path.startswith("/"):
        path = "/" + path
    expected = (expect_status,) if isinstance(expect_status, int) else tuple(expect_status)
    if version is not None:
        return invoke_http(lambda_client, function, str(version), path, timeout=timeout, method=method,
                           headers=headers, expect_status=expected, body=body)
    import httpx

    url = targets.require(url_key).rstrip("/") + path
    stage = "the preview stage" if url_key.startswith("preview") else "the live stage"
    description = f"{method} {_where(url)} (through {stage})"
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.request(method, url, headers=dict(headers or {}), content=body)
    except httpx.TimeoutException:
        return ProbeResult(False, None, _elapsed_ms(started), None, f"no answer within {timeout:g} s", description)
    except httpx.HTTPError as exc:
        return ProbeResult(False, None, _elapsed_ms(started), None, f"{type(exc).__name__}: {exc}", description)
    latency = _elapsed_ms(started)
    answer: Any
    try:
        answer = response.json()
    except ValueError:
        answer = response.text[:500]
    ok = response.status_code in expected
    return ProbeResult(
        ok=ok, status=response.status_code, latency_ms=latency,
        release=response.headers.get(RELEASE_HEADER),
        error=None if ok else f"expected HTTP {'/'.join(map(str, expected))}",
        target_description=description, body=answer,
        version=response.headers.get("x-amz-executed-version"),
        headers={k.lower(): v for k, v in response.headers.items()},
    )


def apigw_proxy_event(path: str, method: str = "GET", headers: dict[str, str] | None = None,
                      body: str | None = None, stage: str = "live") -> dict[str, Any]:
    """An API Gateway REST (v1) Lambda proxy event, as CodeDeploy hooks hand-craft them."""
    split = urlsplit(path)
    # API Gateway hands the function decoded parameters; the last of a repeated one wins, as in its map.
    query = dict(parse_qsl(split.query, keep_blank_values=True)) or None
    all_headers = {"accept": "application/json", "user-agent": "llamadeploy-probe", **(headers or {})}
    request_id = str(uuid.uuid4())
    return {
        "resource": "/{proxy+}",
        "path": split.path or "/",
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": (split.path or "/").lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}", "httpMethod": method, "path": f"/{stage}{split.path or '/'}",
            "stage": stage, "requestId": request_id, "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "llamadeploy-probe"},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def _payload_headers(payload: dict[str, Any]) -> dict[str, str]:
    headers = {k.lower(): str(v) for k, v in (payload.get("headers") or {}).items()}
    for key, values in (payload.get("multiValueHeaders") or {}).items():
        if values and key.lower() not in headers:
            headers[key.lower()] = str(values[0])
    return headers


def interpret_invoke(response: dict[str, Any], description: str, latency_ms: float,
                     expect_status: tuple[int, ...] = (200,)) -> ProbeResult:
    """Map a boto3 ``lambda.invoke`` answer carrying an API Gateway proxy response to a ProbeResult."""
    executed = response.get("ExecutedVersion")
    raw: Any = response.get("Payload")
    data = raw.read() if hasattr(raw, "read") else (raw or b"")
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    if response.get("FunctionError"):
        try:
            detail = json.loads(text)
            message = f"{detail.get('errorType', 'Error')}: {detail.get('errorMessage', '')}"
        except (ValueError, AttributeError):
            message = text[:300]
        return ProbeResult(False, None, latency_ms, None, f"function error ({response['FunctionError']}): {message}",
                           description, version=executed)
    try:
        payload = json.loads(text)
    except ValueError:
        return ProbeResult(False, None, latency_ms, None, f"payload is not an API Gateway proxy response: "
                           f"{text[:200]!r}", description, version=executed)
    if not isinstance(payload, dict) or "statusCode" not in payload:
        return ProbeResult(False, None, latency_ms, None, "payload has no statusCode (not an API Gateway proxy "
                           f"response): {_short(payload, 200)}", description, version=executed)
    status = int(payload["statusCode"])
    body: Any = payload.get("body")
    if payload.get("isBase64Encoded") and isinstance(body, str):
        import base64

        body = base64.b64decode(body).decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            pass
    headers = _payload_headers(payload)
    ok = status in expect_status
    return ProbeResult(ok, status, latency_ms, headers.get(RELEASE_HEADER),
                       None if ok else f"expected HTTP {'/'.join(map(str, expect_status))}",
                       description, body=body, version=executed, headers=headers)


def invoke_http(lambda_client: Any, function: str, version: str, path: str, timeout: float = DEFAULT_TIMEOUT, *,
                method: str = "GET", headers: dict[str, str] | None = None,
                expect_status: tuple[int, ...] = (200,), body: str | None = None) -> ProbeResult:
    """Invoke ``function:version`` with an API Gateway proxy event (AWS; the PreTraffic-hook way)."""
    description = f"lambda:Invoke {function}:{version} {method} {path} (API Gateway proxy event)"
    if lambda_client is None:
        return ProbeResult(False, None, 0.0, None, "no Lambda client given: a version-targeted probe on AWS "
                           "needs lambda_client (StageContext.client('lambda'))", description)
    event = apigw_proxy_event(path, method, headers, body)
    started = time.perf_counter()
    try:
        response = lambda_client.invoke(FunctionName=function, Qualifier=version, InvocationType="RequestResponse",
                                        Payload=json.dumps(event).encode())
    except Exception as exc:
        return _invoke_failed(exc, started, description)
    result = interpret_invoke(response, description, _elapsed_ms(started), expect_status)
    if result.latency_ms > timeout * 1000.0 and result.ok:
        return ProbeResult(False, result.status, result.latency_ms, result.release,
                           f"answered after {result.latency_ms:.0f} ms, over the {timeout:g} s timeout",
                           description, result.body, result.version, headers=result.headers)
    return result


# -- WebSocket --------------------------------------------------------------------------
def _invoke_failed(exc: Exception, started: float, description: str) -> ProbeResult:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    throttled = code == "TooManyRequestsException"
    # A throttle is no answer (a health check that gets one fails); the bake watch reads the
    # "throttled:" detail and leaves it to the throttle-rate trigger (metrics/watch.py).
    return ProbeResult(False, None, _elapsed_ms(started), None,
                       f"throttled: {code}: {exc}" if throttled else f"{type(exc).__name__}: {exc}", description,
                       throttled=throttled)


def ws_connect_event(stage: str = "live") -> dict[str, Any]:
    """An API Gateway WebSocket ``$connect`` event for a direct invoke of the WS function."""
    return {
        "headers": {"host": "llamadeploy-probe", "user-agent": "llamadeploy-probe"},
        "requestContext": {
            "routeKey": "$connect", "eventType": "CONNECT", "stage": stage,
            "connectionId": "probe-" + uuid.uuid4().hex[:12], "requestId": str(uuid.uuid4()),
            "connectedAt": int(time.time() * 1000), "identity": {"sourceIp": "127.0.0.1"},
        },
        "isBase64Encoded": False,
    }


def probe_ws(targets: ResolvedTargets, version: str | None = None, timeout: float = DEFAULT_TIMEOUT, *,
             function: str = DEFAULT_WS_FUNCTION, lambda_client: Any = None, url_key: str = "ws_url") -> ProbeResult:
    """Open a WebSocket through a stage and read its first message, or invoke ``version``'s ``$connect``.

    A version's ``$connect`` handler is invoked directly (the first message of a real
    connection cannot be had without API Gateway), so that probe checks the connect
    handler's answer only; the preview stage (``url_key="preview_ws_url"``) reaches the
    release under test with a real connection.
    """
    if version is not None:
        description = f"lambda:Invoke {function}:{version} $connect (API Gateway WebSocket event)"
        if lambda_client is None:
            return ProbeResult(False, None, 0.0, None, "no Lambda client given for a version-targeted probe",
                               description)
        started = time.perf_counter()
        try:
            response = lambda_client.invoke(FunctionName=function, Qualifier=str(version),
                                            Payload=json.dumps(ws_connect_event()).encode())
        except Exception as exc:
            return _invoke_failed(exc, started, description)
        return interpret_invoke(response, description, _elapsed_ms(started))

    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    url = targets.require(url_key)
    stage = "the preview stage" if url_key.startswith("preview") else "the live stage"
    description = f"WebSocket {_where(url)} (through {stage}), first message"
    started = time.perf_counter()
    try:
        with connect(url, open_timeout=timeout, close_timeout=1) as ws:
            status = ws.response.status_code if ws.response is not None else 101
            served_version = ws.response.headers.get("x-amz-executed-version") if ws.response is not None else None
            remaining = max(0.05, timeout - (time.perf_counter() - started))
            try:
                raw = ws.recv(timeout=remaining)
            except TimeoutError:
                return ProbeResult(False, status, _elapsed_ms(started), None,
                                   f"connected, but no first message within {timeout:g} s", description,
                                   version=served_version)
    except InvalidStatus as exc:
        body: Any = exc.response.body.decode("utf-8", "replace") if exc.response.body else None
        try:
            body = json.loads(body) if body else None
        except ValueError:
            pass
        return ProbeResult(False, exc.response.status_code, _elapsed_ms(started),
                           exc.response.headers.get(RELEASE_HEADER), "handshake refused", description, body=body)
    except TimeoutError:
        return ProbeResult(False, None, _elapsed_ms(started), None, f"no handshake within {timeout:g} s", description)
    except (OSError, WebSocketException) as exc:
        return ProbeResult(False, None, _elapsed_ms(started), None, f"{type(exc).__name__}: {exc}", description)
    latency = _elapsed_ms(started)
    try:
        message: Any = json.loads(raw)
    except (ValueError, TypeError):
        message = raw if isinstance(raw, str) else repr(raw[:200])
    release = message.get("release") if isinstance(message, dict) else None
    return ProbeResult(True, status, latency, release, None, description, body=message, version=served_version)


# -- data stores ------------------------------------------------------------------------
def probe_postgres(dsn: str, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """``SELECT 1`` on a fresh connection."""
    import psycopg

    description = f"PostgreSQL SELECT 1 at {_pg_where(dsn)}"
    started = time.perf_counter()
    try:
        # connect_timeout is whole seconds with a floor of 2 in libpq.
        with psycopg.connect(dsn, connect_timeout=max(2, int(round(timeout))), autocommit=True) as conn:
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            row = conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        return ProbeResult(False, None, _elapsed_ms(started), None, redact(f"{type(exc).__name__}: {exc}", [dsn]),
                           description)
    latency = _elapsed_ms(started)
    ok = row is not None and row[0] == 1
    return ProbeResult(ok, None, latency, None, None if ok else f"SELECT 1 returned {row!r}", description, body=row)


def _pg_where(dsn: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
        host = info.get("host", "localhost")
        if str(host).startswith("/"):
            host = f"socket {host}"
        return f"{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    except Exception:
        return redact(dsn)


def probe_redis(url: str, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """``PING`` on a fresh connection."""
    import redis

    split = urlsplit(url)
    description = f"Redis PING at {split.hostname}:{split.port or 6379}"
    started = time.perf_counter()
    client = None
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        answer = client.ping()
    except Exception as exc:
        return ProbeResult(False, None, _elapsed_ms(started), None, redact(f"{type(exc).__name__}: {exc}", [url]),
                           description)
    finally:
        if client is not None:
            client.close()
    latency = _elapsed_ms(started)
    return ProbeResult(answer is True, None, latency, None, None if answer is True else f"PING answered {answer!r}",
                       description, body="PONG" if answer is True else answer)
