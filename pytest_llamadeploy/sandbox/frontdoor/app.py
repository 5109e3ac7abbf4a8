"""The front door's ASGI app: API Gateway (REST and WebSocket) in front of Lambda alias routing.

HTTP goes to the API function, WebSocket connections to the WS function; each
request or new connection is sent to a version drawn with the alias weights,
or to the version named by ``x-llama-version`` (a direct invoke, whatever its
weight). Backends are the releases' service processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from yarl import URL

from ..state import RELEASE_HEADER, VERSION_HEADER
from .routing import AliasUnavailable, Backend, Router, UnknownVersion
from .telemetry import Telemetry

log = logging.getLogger("llamadeploy.frontdoor")

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
}
_WS_HANDSHAKE = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                 "sec-websocket-protocol", "sec-websocket-accept"}
#: Response header naming the version that served, as Lambda's Invoke returns X-Amz-Executed-Version.
EXECUTED_VERSION_HEADER = "x-amz-executed-version"
STATUS_PATH = "/_frontdoor/routing"
#: The service's loopback-only control paths (faults, cache): never reachable through API Gateway.
PRIVATE_PREFIX = "/_sandbox"
#: How long a backend may take to send its first WebSocket message before the client is accepted anyway.
WS_FIRST_MESSAGE_WAIT = 2.0
#: HTTP requests served at once; beyond it the front door answers 429 at once.
MAX_IN_FLIGHT = 64
#: Seconds to wait for a backend's closing handshake (websockets' default, 10 s, held shutdown up).
WS_CLOSE_TIMEOUT = 1.0


class FrontDoor:
    def __init__(self, router: Router, telemetry: Telemetry, api_function: str, ws_function: str,
                 backend_timeout: float = 30.0, ws_open_timeout: float = 5.0):
        self._in_flight = 0
        self.router = router
        self.telemetry = telemetry
        self.api_function = api_function
        self.ws_function = ws_function
        self.backend_timeout = backend_timeout
        self.ws_open_timeout = ws_open_timeout
        self._http: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self._in_flight >= MAX_IN_FLIGHT and scope.get("path") != STATUS_PATH:
                # Shed load the way API Gateway does (429), and fast: serving requests whose
                # clients already gave up is how an overloaded proxy never recovers.
                await _send_json(send, 429, {"error": "front door overloaded: too many requests in flight",
                                             "in_flight": self._in_flight})
                self.telemetry.record_api(status=429, latency_ms=0.0)
                return
            self._in_flight += 1
            try:
                await self._serve_http(scope, receive, send)
            finally:
                self._in_flight -= 1
        elif scope["type"] == "websocket":
            await self._serve_ws(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

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

    async def _resolve(self, function: str, requested: str | None) -> Backend:
        version = requested.strip() if requested is not None else self.router.view(function).pick()
        try:
            return self.router._backends[(function, version)]
        except KeyError:
            # A version not seen yet (or a targeted one): moto is asked once, off the event loop.
            return await asyncio.to_thread(self.router.backend, function, version)

    # -- HTTP --------------------------------------------------------------------------
    async def _serve_http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers = _headers(scope)
        path = scope.get("path", "/")
        if path == STATUS_PATH:
            await _send_json(send, 200, self._routing_report())
            return
        if path.startswith(PRIVATE_PREFIX):
            await _send_json(send, 403, {"error": f"{PRIVATE_PREFIX}* is not forwarded by the front door; "
                                                  "call the release's own URL (versions[R].url in state.json)"})
            return
        requested = headers.get(VERSION_HEADER)
        targeted = requested is not None
        function = self.api_function
        try:
            backend = await self._resolve(function, requested)
        except UnknownVersion as exc:
            await _send_json(send, 404, {"error": str(exc), "hint": f"list versions with "
                                         f"`aws lambda list-versions-by-function --function-name {function}`"})
            self._count_api(targeted, 404, started)
            return
        except (AliasUnavailable, Exception) as exc:
            await _send_json(send, 503, {"error": f"cannot route {function}: {exc}"})
            self._count_api(targeted, 503, started)
            return

        body = await _read_body(receive)
        forward = [(k, v) for k, v in headers.items() if k not in _HOP_BY_HOP]
        url = backend.url + scope.get("raw_path", path.encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        called = time.perf_counter()
        detail = ""
        try:
            async with self._http.request(scope["method"], URL(url, encoded=True), headers=forward, data=body or None,
                                          allow_redirects=False) as response:
                status, content = response.status, await response.read()
                out_headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP]
        except Exception as exc:  # backend down or too slow: API Gateway answers 502
            self.router.forget(function, backend.version)
            status = 502
            detail = f"{type(exc).__name__}: {exc}".strip()
            content = json.dumps({
                "error": f"{function} version {backend.version} (release {backend.release or '?'}) at "
                         f"{backend.url} did not answer: {detail}",
            }).encode()
            out_headers = [("content-type", "application/json")]
        duration_ms = (time.perf_counter() - called) * 1000.0
        out_headers.append((EXECUTED_VERSION_HEADER, backend.version))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in out_headers]
                    + [(b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})
        self.telemetry.record_invocation(function=function, version=backend.version, targeted=targeted,
                                         status=status, duration_ms=duration_ms, release=backend.release,
                                         detail=detail, method=scope["method"], path=path)
        self._count_api(targeted, status, started)

    def _count_api(self, targeted: bool, status: int, started: float) -> None:
        if not targeted:  # a version-targeted request plays a direct Lambda invoke, not API Gateway
            self.telemetry.record_api(status=status, latency_ms=(time.perf_counter() - started) * 1000.0)

    def _routing_report(self) -> dict[str, Any]:
        return {
            "alias": self.router.alias,
            "functions": {
                fn: {"version": v.primary, "weights": v.weights, "age_s": round(time.time() - v.fetched_at, 3)}
                for fn, v in self.router.views().items()
            },
            "flushes": self.telemetry.flushes,
            "publish_errors": self.telemetry.publish_errors,
        }

    # -- WebSocket -------------------------------------------------------------------
    async def _serve_ws(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        headers = _headers(scope)
        requested = headers.get(VERSION_HEADER)
        targeted = requested is not None
        function = self.ws_function
        try:
            backend = await self._resolve(function, requested)
        except UnknownVersion as exc:
            await _deny(scope, receive, send, 404, {"error": str(exc)})
            return
        except Exception as exc:
            await _deny(scope, receive, send, 503, {"error": f"cannot route {function}: {exc}"})
            return

        url = "ws" + backend.url.removeprefix("http") + scope.get("path", "/")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        forward = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP and k not in _WS_HANDSHAKE}
        started = time.perf_counter()
        first: str | bytes | None = None
        failure: tuple[int, str] | None = None
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
            failure = (code if code >= 400 else 502, f"backend refused the WebSocket handshake with HTTP {code}")
        except Exception as exc:
            self.router.forget(function, backend.version)
            failure = (502, f"backend unreachable: {type(exc).__name__}: {exc}")
        duration_ms = (time.perf_counter() - started) * 1000.0
        self.telemetry.record_ws_connect(function=function, version=backend.version, targeted=targeted,
                                         ok=failure is None, duration_ms=duration_ms, release=backend.release,
                                         detail=failure[1] if failure else "")
        if failure is not None:
            if upstream is not None:
                await upstream.close()
            await _deny(scope, receive, send, failure[0], {
                "error": f"{function} version {backend.version} (release {backend.release or '?'}) at "
                         f"{backend.url}: {failure[1]}"})
            return
        assert upstream is not None
        await self._pump(upstream, first, backend, receive, send)

    async def _pump(self, upstream: Any, first: str | bytes | None, backend: Backend, receive: Any,
                    send: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        message = await receive()
        if message["type"] != "websocket.connect":
            await upstream.close()
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol,
                    "headers": [(RELEASE_HEADER.encode(), backend.release.encode("latin-1")),
                                (EXECUTED_VERSION_HEADER.encode(), backend.version.encode())]})

        async def to_client() -> None:
            try:
                if first is not None:
                    await send(_ws_frame(first))
                async for data in upstream:
                    await send(_ws_frame(data))
            except ConnectionClosed:
                pass
            code = upstream.close_code or 1000
            await send({"type": "websocket.close", "code": code if code != 1006 else 1011})

        async def to_backend() -> None:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    await upstream.close(code=event.get("code", 1000) if event.get("code") != 1006 else 1000)
                    return
                data = event.get("text") if event.get("text") is not None else event.get("bytes")
                if data is not None:
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


def _ws_frame(data: str | bytes) -> dict[str, Any]:
    if isinstance(data, str):
        return {"type": "websocket.send", "text": data}
    return {"type": "websocket.send", "bytes": data}


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
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


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
        await send({"type": "websocket.close", "code": 1011, "reason": payload.get("error", "")[:120]})
