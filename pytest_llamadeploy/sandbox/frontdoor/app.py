"""The front door's ASGI app: API Gateway stages and Lambda's Invoke API, in front of the releases.

One app serves three kinds of listening socket (``scope["server"]`` says which):

- an API Gateway **stage** (``live`` for users, ``preview`` for the release under
  test at 0 %): REST requests go to the API function, WebSocket connections to
  the WS function, each through the stage's alias (its ``lambdaAlias`` stage
  variable, AWS.md) with a version drawn from the alias weights;
- Lambda's **Invoke API** (``POST /2015-03-31/functions/{name}/invocations``):
  an API Gateway proxy event (or a ``$connect`` event) run by the version the
  ``Qualifier`` names, answered as Lambda answers (``X-Amz-Executed-Version``,
  ``X-Amz-Function-Error: Unhandled``, ``TooManyRequestsException``); every other
  Lambda API call is passed to moto. The gate's health probes invoke versions
  here exactly as they invoke them on AWS.

The releases' service processes are the functions. What an invocation counts as
(an Error only for an unhandled failure, a throttle before the function runs, a
handled 500 as a success) and what the client of a stage sees follow
``sandbox/physics.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from yarl import URL

from ..physics import (
    ANNOTATIONS_HEADER,
    FUNCTION_ERROR_HEADER,
    FUNCTION_NAME_HEADER,
    FUNCTION_VERSION_HEADER,
    THROTTLED_HEADER,
    Outcome,
    lambda_outcome,
)
from .routing import AliasUnavailable, Backend, Router, UnknownVersion
from .telemetry import CONNECT_ROUTE, Telemetry

log = logging.getLogger("llamadeploy.frontdoor")

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
}
_WS_HANDSHAKE = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                 "sec-websocket-protocol", "sec-websocket-accept"}
#: What the runtime adds and strips: the release must never see the client's copies, the client never ours.
_RUNTIME = {FUNCTION_ERROR_HEADER, THROTTLED_HEADER, FUNCTION_NAME_HEADER, FUNCTION_VERSION_HEADER,
            ANNOTATIONS_HEADER}
#: Response header naming the version that served, as Lambda's Invoke returns X-Amz-Executed-Version.
EXECUTED_VERSION_HEADER = "x-amz-executed-version"
STATUS_PATH = "/_frontdoor/routing"
#: The service's loopback-only control paths (faults, cache): never reachable through API Gateway.
PRIVATE_PREFIX = "/_sandbox"
INVOKE_PREFIX = "/2015-03-31/functions/"
#: How long a backend may take to send its first WebSocket message before the client is accepted anyway.
WS_FIRST_MESSAGE_WAIT = 2.0
#: HTTP requests served at once; beyond it the front door answers 429 at once (API Gateway's throttling).
MAX_IN_FLIGHT = 64
#: Seconds to wait for a backend's closing handshake (websockets' default, 10 s, held shutdown up).
WS_CLOSE_TIMEOUT = 1.0
#: What API Gateway answers for an integration failure (an unhandled error, a throttled Lambda).
_GATEWAY_ERROR = {502: {"message": "Internal server error"}, 500: {"message": "Internal server error"}}


@dataclass(frozen=True)
class StageRoute:
    """An API Gateway stage: its name (the ``Stage`` metric dimension) and the alias its integrations call."""

    name: str
    alias: str


@dataclass
class Invocation:
    """One function invocation as the runtime saw it."""

    backend: Backend
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    content: bytes = b""
    outcome: Outcome = field(default_factory=lambda: lambda_outcome(200))
    duration_ms: float = 0.0
    detail: str = ""
    annotations: dict[str, Any] = field(default_factory=dict)


class FrontDoor:
    def __init__(self, router: Router, telemetry: Telemetry, api_function: str, ws_function: str, *,
                 stages: dict[int, StageRoute] | None = None, lambda_port: int | None = None,
                 aws_endpoint: str = "", backend_timeout: float = 30.0, ws_open_timeout: float = 5.0):
        self._in_flight = 0
        self.router = router
        self.telemetry = telemetry
        self.api_function = api_function
        self.ws_function = ws_function
        #: listening port -> the stage it serves (a single-port front door serves ``live``).
        self.stages = stages or {}
        self.lambda_port = lambda_port
        self.aws_endpoint = aws_endpoint.rstrip("/")
        self.backend_timeout = backend_timeout
        self.ws_open_timeout = ws_open_timeout
        self._http: Any = None

    def _stage_of(self, scope: dict[str, Any]) -> StageRoute | None:
        port = (scope.get("server") or (None, None))[1]
        if port is not None and port == self.lambda_port:
            return None
        return self.stages.get(int(port or 0)) or StageRoute("live", "live")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        stage = self._stage_of(scope)
        if scope["type"] == "http":
            if stage is None:
                await self._lambda_api(scope, receive, send)
                return
            if self._in_flight >= MAX_IN_FLIGHT and scope.get("path") != STATUS_PATH:
                # Shed load the way API Gateway does (429), and fast: serving requests whose
                # clients already gave up is how an overloaded proxy never recovers.
                await _send_json(send, 429, {"message": "Too Many Requests", "in_flight": self._in_flight})
                self.telemetry.record_rest(stage=stage.name, status=429, latency_ms=0.0)
                return
            self._in_flight += 1
            try:
                await self._serve_http(stage, scope, receive, send)
            finally:
                self._in_flight -= 1
        elif scope["type"] == "websocket" and stage is not None:
            await self._serve_ws(stage, scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        import aiohttp

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # aiohttp's client, not httpx's: proxying is the front door's whole job, and under the
                # performance suite's load httpx's per-request overhead was 64 % of the front door's
                # CPU (py-spy, bench/FRONTDOOR.md); aiohttp's pooled keep-alive path costs a fraction.
                self._http = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=200, limit_per_host=100, keepalive_timeout=30,
                                                   use_dns_cache=False, ssl=False),
                    timeout=aiohttp.ClientTimeout(total=self.backend_timeout),
                    auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _backend(self, function: str, version: str) -> Backend:
        try:
            return self.router._backends[(function, version)]
        except KeyError:
            # A version not seen yet: moto is asked once, off the event loop.
            return await asyncio.to_thread(self.router.backend, function, version)

    # -- one invocation -------------------------------------------------------------------
    async def _invoke(self, function: str, version: str, backend: Backend, method: str, path_qs: str,
                      headers: list[tuple[str, str]], body: bytes) -> Invocation:
        """Run one HTTP invocation on a release; interpret the runtime's signals (physics.py)."""
        forward = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP and k.lower() not in _RUNTIME]
        forward += [(FUNCTION_NAME_HEADER, function), (FUNCTION_VERSION_HEADER, version)]
        called = time.perf_counter()
        try:
            async with self._http.request(method, URL(backend.url + path_qs, encoded=True), headers=forward,
                                          data=body or None, allow_redirects=False) as response:
                content = await response.read()
                status = response.status
                raw = list(response.headers.items())
        except Exception as exc:  # the function could not run or did not finish: Lambda counts an Error
            self.router.forget(function, backend.version)
            detail = f"{type(exc).__name__}: {exc}".strip()
            return Invocation(backend, 502, [], b"", lambda_outcome(502, unreachable=True),
                              (time.perf_counter() - called) * 1000.0,
                              f"{function} version {version} (release {backend.release or '?'}) at {backend.url} "
                              f"did not answer: {detail}")
        lowered = {k.lower(): v for k, v in raw}
        outcome = lambda_outcome(status, function_error=lowered.get(FUNCTION_ERROR_HEADER),
                                 throttled=THROTTLED_HEADER in lowered)
        annotations = _annotations(lowered.get(ANNOTATIONS_HEADER))
        out = [(k, v) for k, v in raw if k.lower() not in _HOP_BY_HOP and k.lower() not in _RUNTIME]
        detail = content[:300].decode("utf-8", "replace") if outcome.error else ""
        return Invocation(backend, status, out, content, outcome, (time.perf_counter() - called) * 1000.0, detail,
                          annotations)

    def _count(self, function: str, resource: str, executed: str | None, inv: Invocation, method: str,
               path: str) -> None:
        self.telemetry.record_invocation(
            function=function, resource=resource, executed_version=executed, version=inv.backend.version,
            outcome=inv.outcome, duration_ms=inv.duration_ms, release=inv.backend.release, detail=inv.detail,
            method=method, path=path, annotations=inv.annotations)

    # -- API Gateway REST stage -------------------------------------------------------------
    async def _serve_http(self, stage: StageRoute, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        path = scope.get("path", "/")
        if path == STATUS_PATH:
            await _send_json(send, 200, self._routing_report(stage))
            return
        if path.startswith(PRIVATE_PREFIX):
            await _send_json(send, 403, {"message": f"{PRIVATE_PREFIX}* is not forwarded by API Gateway; "
                                                    "call the release's own URL (versions[R].url in state.json)"})
            return
        function = self.api_function
        try:
            version = self.router.view(function, stage.alias).pick()
            backend = await self._backend(function, version)
        except (AliasUnavailable, UnknownVersion, Exception) as exc:
            await _send_json(send, 503, {"message": f"stage {stage.name} cannot call {function}:{stage.alias}: {exc}"})
            self.telemetry.record_rest(stage=stage.name, status=503, latency_ms=_ms(started))
            return
        body = await _read_body(receive)
        path_qs = scope.get("raw_path", path.encode()).decode("latin-1")
        if scope.get("query_string"):
            path_qs += "?" + scope["query_string"].decode("latin-1")
        inv = await self._invoke(function, version, backend, scope["method"], path_qs, _header_list(scope), body)
        outcome = inv.outcome
        if outcome.error or outcome.throttled:
            # API Gateway answers an integration failure itself, without the function's body or headers.
            status, content = outcome.client_status, json.dumps(_GATEWAY_ERROR[outcome.client_status]).encode()
            out_headers = [("content-type", "application/json")]
        else:
            status, content, out_headers = inv.status, inv.content, list(inv.headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in out_headers]
                    + [(b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})
        self._count(function, stage.alias, version, inv, scope["method"], path)
        self.telemetry.record_rest(stage=stage.name, status=status, latency_ms=_ms(started),
                                   integration_ms=inv.duration_ms)

    def _routing_report(self, stage: StageRoute) -> dict[str, Any]:
        return {
            "stage": stage.name,
            "alias": stage.alias,
            "functions": {
                fn: {"version": v.primary, "weights": v.weights, "age_s": round(time.time() - v.fetched_at, 3)}
                for (fn, alias), v in self.router.views().items() if alias == stage.alias
            },
            "flushes": self.telemetry.flushes,
            "publish_errors": self.telemetry.publish_errors,
            "physics": self.telemetry.physics.describe(),
        }

    # -- Lambda Invoke API --------------------------------------------------------------------
    async def _lambda_api(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "/")
        body = await _read_body(receive)
        parts = path[len(INVOKE_PREFIX):].split("/") if path.startswith(INVOKE_PREFIX) else []
        if scope["method"] == "POST" and len(parts) == 2 and parts[1] == "invocations":
            await self._lambda_invoke(parts[0], scope, body, send)
            return
        await self._to_moto(scope, body, send)

    async def _to_moto(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        """Every Lambda API call but Invoke is moto's: passed through as it came."""
        target = self.aws_endpoint + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in _header_list(scope) if k.lower() not in _HOP_BY_HOP]
        try:
            async with self._http.request(scope["method"], URL(target, encoded=True), headers=headers,
                                          data=body or None, allow_redirects=False) as response:
                content = await response.read()
                status = response.status
                out = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP]
        except Exception as exc:
            await _send_json(send, 503, {"message": f"the AWS endpoint {self.aws_endpoint} did not answer: {exc}"})
            return
        await _respond(send, status, out, content)

    async def _lambda_invoke(self, name: str, scope: dict[str, Any], body: bytes, send: Any) -> None:
        from urllib.parse import parse_qs, unquote

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        function = unquote(name).split(":")[-1] if unquote(name).startswith("arn:") else unquote(name)
        qualifier = (query.get("Qualifier") or ["$LATEST"])[0]
        if function not in (self.api_function, self.ws_function):
            await _lambda_error(send, 404, "ResourceNotFoundException", f"Function not found: {function}")
            return
        try:
            if qualifier.isdigit():
                version, executed = qualifier, None
            else:  # an alias: Lambda picks a version by its weights and says which ran
                version = self.router.view(function, qualifier).pick()
                executed = version
            backend = await self._backend(function, version)
        except (AliasUnavailable, UnknownVersion) as exc:
            await _lambda_error(send, 404, "ResourceNotFoundException", str(exc))
            return
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            await _lambda_error(send, 400, "InvalidRequestContentException", "Could not parse request body into json")
            return
        route = ((event.get("requestContext") or {}).get("routeKey") if isinstance(event, dict) else None)
        if route == CONNECT_ROUTE:
            inv = await self._invoke_connect(function, version, backend, event)
            resource = qualifier
        else:
            method, path_qs, headers, payload = _from_proxy_event(event)
            inv = await self._invoke(function, version, backend, method, path_qs, headers, payload)
            resource = qualifier
        self._count(function, resource, executed, inv, "INVOKE", route or "proxy")
        if inv.outcome.throttled:
            await _lambda_error(send, 429, "TooManyRequestsException", "Rate Exceeded.",
                                extra={"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"})
            return
        headers = [("content-type", "application/json"), ("x-amz-executed-version", version)]
        if inv.outcome.error:
            headers.append(("x-amz-function-error", "Unhandled"))
            payload_out = json.dumps({"errorMessage": inv.detail[:1000] or "unhandled error",
                                      "errorType": "Runtime.UnhandledError"}).encode()
        else:
            payload_out = json.dumps(_proxy_response(inv)).encode()
        await _respond(send, 200, headers, payload_out)

    async def _invoke_connect(self, function: str, version: str, backend: Backend, event: dict[str, Any]) -> Invocation:
        """A ``$connect`` event: the release's WebSocket handshake, as its connect handler's answer."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        headers = {**{str(k): str(v) for k, v in (event.get("headers") or {}).items()
                      if str(k).lower() not in _HOP_BY_HOP and str(k).lower() not in _WS_HANDSHAKE},
                   FUNCTION_NAME_HEADER: function, FUNCTION_VERSION_HEADER: version}
        url = "ws" + backend.url.removeprefix("http") + "/ws"
        started = time.perf_counter()
        try:
            async with connect(url, additional_headers=headers, open_timeout=self.ws_open_timeout,
                               close_timeout=WS_CLOSE_TIMEOUT, compression=None) as ws:
                first = await asyncio.wait_for(ws.recv(), WS_FIRST_MESSAGE_WAIT)
            status, content = 200, (bytes(first) if isinstance(first, bytes | bytearray) else first.encode())
        except InvalidStatus as exc:
            status, content = exc.response.status_code, bytes(exc.response.body or b"")
        except Exception as exc:
            self.router.forget(function, backend.version)
            return Invocation(backend, 502, [], b"", lambda_outcome(502, unreachable=True), _ms(started),
                              f"{type(exc).__name__}: {exc}")
        return Invocation(backend, status, [("x-llama-release", backend.release)], content, lambda_outcome(status),
                          _ms(started))

    # -- API Gateway WebSocket stage ----------------------------------------------------------
    async def _serve_ws(self, stage: StageRoute, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        headers = _headers(scope)
        function = self.ws_function
        try:
            version = self.router.view(function, stage.alias).pick()
            backend = await self._backend(function, version)
        except Exception as exc:
            await _deny(scope, receive, send, 503, {"message": f"stage {stage.name} cannot call "
                                                               f"{function}:{stage.alias}: {exc}"})
            self.telemetry.record_ws(stage=stage.name, route=CONNECT_ROUTE, execution_error=True)
            return

        url = "ws" + backend.url.removeprefix("http") + scope.get("path", "/")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        forward = {k: v for k, v in headers.items()
                   if k not in _HOP_BY_HOP and k not in _WS_HANDSHAKE and k not in _RUNTIME}
        forward.update({FUNCTION_NAME_HEADER: function, FUNCTION_VERSION_HEADER: version})
        started = time.perf_counter()
        first: str | bytes | None = None
        failure: tuple[int, str] | None = None
        unreachable = False
        upstream = None
        try:
            upstream = await connect(url, additional_headers=forward, open_timeout=self.ws_open_timeout,
                                     subprotocols=_subprotocols(scope), max_size=None,
                                     close_timeout=WS_CLOSE_TIMEOUT, compression=None)
            try:
                first = await asyncio.wait_for(upstream.recv(), WS_FIRST_MESSAGE_WAIT)
            except TimeoutError:
                first = None  # a quiet backend is not a failed connect
            except ConnectionClosed as exc:
                failure = (502, f"backend closed the connection before its first message (code {exc.code} "
                                f"{exc.reason!r})")
        except InvalidStatus as exc:
            code = exc.response.status_code
            failure = (code if code >= 400 else 502, f"the $connect handler refused the connection with HTTP {code}")
        except Exception as exc:
            self.router.forget(function, backend.version)
            unreachable = True
            failure = (502, f"backend unreachable: {type(exc).__name__}: {exc}")
        duration_ms = _ms(started)
        # A $connect handler that answers "no" ran fine (no Lambda Error); API Gateway counts an
        # IntegrationError. A handler that could not run is a Lambda Error too.
        annotations: dict[str, Any] = {}
        if upstream is not None and upstream.response is not None:
            annotations = _annotations(upstream.response.headers.get(ANNOTATIONS_HEADER))
        inv = Invocation(backend, failure[0] if failure else 200, [], b"",
                         lambda_outcome(failure[0] if failure else 200, unreachable=unreachable), duration_ms,
                         failure[1] if failure else "", annotations)
        self._count(function, stage.alias, version, inv, "WS", CONNECT_ROUTE)
        self.telemetry.record_ws(stage=stage.name, route=CONNECT_ROUTE, integration_error=failure is not None,
                                 integration_ms=duration_ms)
        if failure is not None:
            if upstream is not None:
                await upstream.close()
            await _deny(scope, receive, send, failure[0], {
                "message": f"{function} version {version} (release {backend.release or '?'}): {failure[1]}"})
            return
        assert upstream is not None
        relayed = await self._pump(upstream, first, receive, send)
        self.telemetry.record_ws(stage=stage.name, route="$default", messages=relayed)

    async def _pump(self, upstream: Any, first: str | bytes | None, receive: Any, send: Any) -> int:
        """Relay both ways until either side closes; returns the messages relayed (MessageCount)."""
        from websockets.exceptions import ConnectionClosed

        relayed = 0
        message = await receive()
        if message["type"] != "websocket.connect":
            await upstream.close()
            return relayed
        # API Gateway's handshake answer carries no header of the function's: the release is in the hello.
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def to_client() -> None:
            nonlocal relayed
            try:
                if first is not None:
                    await send(_ws_frame(first))
                    relayed += 1
                async for data in upstream:
                    await send(_ws_frame(data))
                    relayed += 1
            except ConnectionClosed:
                pass
            code = upstream.close_code or 1000
            await send({"type": "websocket.close", "code": code if code != 1006 else 1011})

        async def to_backend() -> None:
            nonlocal relayed
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    await upstream.close(code=event.get("code", 1000) if event.get("code") != 1006 else 1000)
                    return
                data = event.get("text") if event.get("text") is not None else event.get("bytes")
                if data is not None:
                    relayed += 1
                    try:
                        await upstream.send(data)
                    except ConnectionClosed:
                        return

        tasks = [asyncio.create_task(to_client()), asyncio.create_task(to_backend())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
        return relayed


def _annotations(raw: str | None) -> dict[str, Any]:
    """The X-Ray annotations a release handed its runtime (a JSON object), or none."""
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _proxy_response(inv: Invocation) -> dict[str, Any]:
    """An API Gateway proxy response, as a Lambda function behind a proxy integration returns it."""
    headers: dict[str, str] = {}
    for key, value in inv.headers:
        headers[key] = value if key not in headers else f"{headers[key]}, {value}"
    try:
        text, encoded = inv.content.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(inv.content).decode(), True
    return {"statusCode": inv.status, "headers": headers, "body": text, "isBase64Encoded": encoded}


def _from_proxy_event(event: Any) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """(method, path?query, headers, body) of an API Gateway REST proxy event."""
    if not isinstance(event, dict):
        event = {}
    method = str(event.get("httpMethod") or "GET")
    path = str(event.get("path") or "/")
    multi = event.get("multiValueQueryStringParameters") or {}
    single = event.get("queryStringParameters") or {}
    pairs = [(k, v) for k, values in multi.items() for v in values] if multi else list(single.items())
    path_qs = path + (("?" + urlencode(pairs)) if pairs else "")
    headers = [(str(k), str(v)) for k, v in (event.get("headers") or {}).items()]
    body = event.get("body") or ""
    payload = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode()
    return method, path_qs, headers, payload


def _ws_frame(data: str | bytes) -> dict[str, Any]:
    if isinstance(data, str):
        return {"type": "websocket.send", "text": data}
    return {"type": "websocket.send", "bytes": data}


def _header_list(scope: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, text in _header_list(scope):
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out


def _subprotocols(scope: dict[str, Any]) -> list[Any] | None:
    return scope.get("subprotocols") or None


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _respond(send: Any, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers]
                + [(b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    await _respond(send, status, [("content-type", "application/json")], json.dumps(payload).encode())


async def _lambda_error(send: Any, status: int, error_type: str, message: str,
                        extra: dict[str, Any] | None = None) -> None:
    """An error of Lambda's API itself (x-amzn-ErrorType), as botocore parses it."""
    await _respond(send, status, [("content-type", "application/json"), ("x-amzn-errortype", error_type)],
                   json.dumps({"Type": "User", "message": message, **(extra or {})}).encode())


async def _deny(scope: dict[str, Any], receive: Any, send: Any, status: int, payload: dict[str, Any]) -> None:
    """Refuse a WebSocket handshake with an HTTP status and a JSON body, as API Gateway does."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps(payload).encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1011, "reason": str(payload.get("message", ""))[:120]})
