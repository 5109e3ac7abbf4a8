"""The reference On-Chain service (ASGI): the API in docs/service-contract.md.

One process per release. Everything a gate checks is real: PostgreSQL queries
behind a Redis read-through cache, Redis pub/sub to WebSocket clients, alerts
to an SQS queue in moto. Faults (faults.py) are injected at the edges only, so
a healthy process has no sandbox-specific behaviour in its request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import statistics
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from ...redact import redact
from ..physics import (
    ANNOTATIONS_HEADER,
    FUNCTION_ERROR_HEADER,
    FUNCTION_NAME_HEADER,
    FUNCTION_VERSION_HEADER,
    THROTTLED_HEADER,
)
from ..state import RELEASE_HEADER
from . import auth, emf
from .db import Database, protocol_row
from .faults import Faults
from .hub import Client, Hub

log = logging.getLogger("llamadeploy.service")

CACHE_TTL = 60
CACHE_PREFIX = "llama:cache:"
HITS_KEY = "llama:stats:cache_hits"
MISSES_KEY = "llama:stats:cache_misses"
DB_MS_PREFIX = "llama:stats:db_ms:"
DB_MS_KEEP = 2000
CHAIN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

_INSERT_ALERTS = """
INSERT INTO alerts (id, rule_id, event_id, above, tvl, previous, ts)
SELECT gen_random_uuid()::text, r.id, %(event_id)s, r.above, %(tvl)s, %(previous)s, to_timestamp(%(ts)s)
FROM alert_rules r
WHERE r.chain = %(chain)s AND %(previous)s <= r.above AND r.above < %(tvl)s
ON CONFLICT (rule_id, event_id) DO NOTHING
RETURNING id, rule_id, above
"""


@dataclass
class ServiceConfig:
    release: str
    state_dir: Path
    postgres_dsn: str
    redis_url: str
    aws_endpoint: str = ""
    region: str = "us-east-1"
    sqs_queue_url: str = ""
    #: The alerts SNS topic (resources.alerts_topic): set, each alert is published there and reaches the
    #: alerts queue through its subscription; unset, it is sent to ``sqs_queue_url`` directly.
    alerts_topic_arn: str = ""
    faults: dict[str, float | bool] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str = ""):
        super().__init__(detail or error)
        self.status, self.error, self.detail = status, error, detail


def _error(status: int, error: str, detail: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": error, **({"detail": detail} if detail else {})}
    return JSONResponse(body, status_code=status, headers=headers)


class Service:
    """The state of one service process; request handlers are its methods."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.release = config.release
        self.faults = Faults(config.faults)
        self.secret = auth.load_secret(config.state_dir)
        self.db = Database(config.postgres_dsn)
        self.redis: Any = None
        self.hub: Hub | None = None
        self._sqs: Any = None
        self.counters = {"published": 0, "ws_accepted": 0, "ws_rejected": 0}
        self.db_ms: dict[str, deque[float]] = {}
        #: The per-version signal of docs/service-contract.md (EMF on stdout, once a second).
        self.emf = emf.Emf()

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(self.config.redis_url, decode_responses=True,
                                       socket_timeout=5, socket_connect_timeout=5)
        await self.db.apply_schema()
        self.hub = Hub(self.redis, self.faults, self.emf)
        self.hub.start()
        self.emf.start()
        await asyncio.wait_for(self.hub.ready.wait(), 10)
        if self.config.alerts_topic_arn or self.config.sqs_queue_url:
            self._sqs = await asyncio.to_thread(self._make_client, "sns" if self.config.alerts_topic_arn else "sqs")

    async def stop(self) -> None:
        await self.emf.stop()
        if self.hub is not None:
            await self.hub.stop()
        await self.db.close()
        if self.redis is not None:
            await self.redis.aclose()

    def _make_client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        from ..state import SANDBOX_CREDENTIALS

        kwargs: dict[str, Any] = {"region_name": self.config.region,
                                  "config": Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=5)}
        if self.config.aws_endpoint:
            kwargs.update(endpoint_url=self.config.aws_endpoint, **SANDBOX_CREDENTIALS)
        return boto3.client(service, **kwargs)

    # -- helpers -----------------------------------------------------------

    def user(self, request: Request) -> str:
        try:
            return auth.verify(self.secret, auth.bearer(request.headers.get("authorization")))
        except auth.AuthError as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None

    @staticmethod
    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise ApiError(400, "bad_request", "body must be a JSON object") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", f"body must be a JSON object, got {type(data).__name__}")
        return data

    @staticmethod
    def chain_of(value: Any, where: str = "chain") -> str:
        if not isinstance(value, str) or not CHAIN_RE.match(value):
            raise ApiError(400, "bad_request", f"{where} must be 1-64 characters of A-Z a-z 0-9 _ . -, got {value!r}")
        return value

    @staticmethod
    def number_of(data: dict[str, Any], key: str) -> float:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ApiError(400, "bad_request", f"{key} must be a finite number >= 0, got {value!r}")
        return float(value)

    async def cached(self, key: str, query: str, params: tuple[Any, ...],
                     shape: Callable[[list[tuple[Any, ...]]], Any], request: Request) -> tuple[Any, str]:
        """Read-through cache: (value, "hit" | "miss" | "refresh").

        Every cache read is counted as a hit or a miss. A request with
        ``Cache-Control: no-cache`` asks for a fresh read: PostgreSQL is read and the
        cache entry rewritten, without a cache read, so it counts as neither and
        leaves the hit rate to the reads that use the cache. The performance gate
        sends a few, so the release's own query time is sampled under load even
        while the cache is warm (a load that only hits the cache shows no query).
        """
        fresh = "no-cache" in request.headers.get("cache-control", "").lower()
        bypass = self.faults.on("cache_bypass")
        if not fresh:
            # With the bypass the GET still happens, on a key never written, so Redis's
            # own keyspace_misses sees what the service's counters see.
            raw = await self.redis.get(f"{CACHE_PREFIX}bypass:{uuid.uuid4().hex}" if bypass else key)
            if raw is not None:
                await self.redis.incr(HITS_KEY)
                self.emf.count("CacheHits")
                return json.loads(raw), "hit"
            self.emf.count("CacheMisses")
        rows, elapsed = await self.db.fetch(query, params, self.faults.ms("slow_query_ms"))
        value = shape(rows)
        self.db_ms.setdefault(query, deque(maxlen=DB_MS_KEEP)).append(elapsed)
        self.emf.value("DbQueryTime", elapsed)
        pipe = self.redis.pipeline(transaction=False)
        if not bypass:
            pipe.set(key, json.dumps(value), ex=CACHE_TTL)
        if not fresh:
            pipe.incr(MISSES_KEY)
        pipe.lpush(DB_MS_PREFIX + query, round(elapsed, 3))
        pipe.ltrim(DB_MS_PREFIX + query, 0, DB_MS_KEEP - 1)
        await pipe.execute()
        return value, "refresh" if fresh else "miss"

    @staticmethod
    def with_cache(value: Any, cache: str, status: int = 200) -> JSONResponse:
        return JSONResponse(value, status_code=status, headers={"x-cache": cache})

    # -- endpoints ---------------------------------------------------------

    async def health(self, request: Request) -> Response:
        checks: dict[str, dict[str, Any]] = {}

        async def check(name: str, probe: Callable[[], Awaitable[Any]]) -> None:
            start = time.perf_counter()
            try:
                await asyncio.wait_for(probe(), 2.0)
                checks[name] = {"ok": True}
            except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
                checks[name] = {"ok": False, "error": redact(f"{type(exc).__name__}: {exc}".strip())[:300]}
            checks[name]["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)

        await asyncio.gather(check("postgres", self.db.ping), check("redis", self.redis.ping))
        if self.faults.on("crash"):
            checks["crash"] = {"ok": False, "error": "fault crash=true"}
        ok = all(c["ok"] for c in checks.values())
        body = {"status": "ok" if ok else "fail", "release": self.release, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def token(self, request: Request) -> Response:
        data = await self.body(request)
        try:
            token, expires = auth.issue(self.secret, data.get("user"))  # type: ignore[arg-type]
        except auth.AuthError as exc:
            raise ApiError(400, "bad_request", f"user: {exc}, got {data.get('user')!r}") from None
        return JSONResponse({"token": token, "user": data["user"], "expires_at": expires})

    async def chains(self, request: Request) -> Response:
        self.user(request)
        value, cache = await self.cached(f"{CACHE_PREFIX}chains", "chains", (),
                                         lambda rows: {"chains": [r[0] for r in rows]}, request)
        return self.with_cache(value, cache)

    async def protocols(self, request: Request) -> Response:
        self.user(request)
        chain = request.query_params.get("chain")
        if chain is None:
            value, cache = await self.cached(
                f"{CACHE_PREFIX}all_protocols", "all_protocols", (),
                lambda rows: {"chain": None, "protocols": [protocol_row(r) for r in rows]}, request)
        else:
            chain = self.chain_of(chain, "query parameter chain")
            value, cache = await self.cached(
                f"{CACHE_PREFIX}protocols_by_chain:{chain}", "protocols_by_chain", (chain,),
                lambda rows: {"chain": chain, "protocols": [protocol_row(r) for r in rows]}, request)
        return self.with_cache(value, cache)

    async def protocol(self, request: Request) -> Response:
        self.user(request)
        pid = request.path_params["id"]
        value, cache = await self.cached(f"{CACHE_PREFIX}protocol_by_id:{pid}", "protocol_by_id", (pid,),
                                         lambda rows: protocol_row(rows[0]) if rows else None, request)
        if value is None:
            return self.with_cache({"error": "not_found", "detail": f"no protocol with id {pid}"}, cache, 404)
        return self.with_cache(value, cache)

    async def tvl(self, request: Request) -> Response:
        self.user(request)
        chain = self.chain_of(request.path_params["chain"])
        value, cache = await self.cached(
            f"{CACHE_PREFIX}tvl_by_chain:{chain}", "tvl_by_chain", (chain,),
            lambda rows: {"chain": rows[0][0], "tvl": float(rows[0][1]), "protocols": rows[0][2]} if rows else None,
            request)
        if value is None:
            return self.with_cache({"error": "not_found", "detail": f"no protocols on chain {chain!r}"}, cache, 404)
        return self.with_cache(value, cache)

    async def publish_tvl(self, request: Request) -> Response:
        self.user(request)
        data = await self.body(request)
        chain = self.chain_of(data.get("chain"))
        new = self.number_of(data, "tvl")
        event_id, ts = uuid.uuid4().hex, time.time()
        # SET ... GET swaps atomically: concurrent events, on any release, each see their true predecessor.
        raw_previous = await self.redis.set(f"llama:last_tvl:{chain}", repr(new), get=True)
        if raw_previous is None:
            rows, _ = await self.db.fetch("tvl_by_chain", (chain,))
            previous = float(rows[0][1]) if rows else 0.0
        else:
            previous = float(raw_previous)
        event = {"type": "event", "channel": "tvl", "id": event_id, "ts": ts, "chain": chain,
                 "tvl": new, "previous": previous, "release": self.release}
        assert self.hub is not None
        await self.hub.publish("tvl", event)
        self.counters["published"] += 1
        fired = await self.db.execute(_INSERT_ALERTS, {"event_id": event_id, "tvl": new, "previous": previous,
                                                       "ts": ts, "chain": chain})
        alerts = []
        for alert_id, rule_id, above in fired:
            alert = {"type": "alert", "channel": "alerts", "id": alert_id, "rule_id": rule_id, "event_id": event_id,
                     "ts": time.time(), "chain": chain, "above": above, "tvl": new, "previous": previous,
                     "release": self.release}
            await self.hub.publish("alerts", alert)
            alerts.append({"id": alert_id, "rule_id": rule_id, "sqs": await self._send_sqs(alert)})
        return JSONResponse({"id": event_id, "ts": ts, "chain": chain, "tvl": new, "previous": previous,
                             "alerts": alerts})

    async def _send_sqs(self, alert: dict[str, Any]) -> bool:
        if self._sqs is None:
            return False
        # ``chain`` lets a subscription filter out the gate's test alerts (chains ``llamadeploy-...``).
        attributes = {"release": {"DataType": "String", "StringValue": self.release},
                      "chain": {"DataType": "String", "StringValue": str(alert["chain"])}}
        try:
            if self.config.alerts_topic_arn:
                await asyncio.to_thread(self._sqs.publish, TopicArn=self.config.alerts_topic_arn,
                                        Message=json.dumps(alert), MessageAttributes=attributes)
            else:
                await asyncio.to_thread(self._sqs.send_message, QueueUrl=self.config.sqs_queue_url,
                                        MessageBody=json.dumps(alert), MessageAttributes=attributes)
            return True
        except Exception as exc:  # noqa: BLE001 - the alert is stored and published; report, do not fail the event
            log.warning("alert %s not sent to SQS: %s", alert["id"], redact(str(exc)))
            return False

    async def create_rule(self, request: Request) -> Response:
        owner = self.user(request)
        data = await self.body(request)
        chain = self.chain_of(data.get("chain"))
        above = self.number_of(data, "above")
        rows = await self.db.execute(
            "INSERT INTO alert_rules (chain, above, owner) VALUES (%s, %s, %s) "
            "RETURNING id, extract(epoch FROM created_at)::float8", (chain, above, owner))
        rule_id, created = rows[0]
        return JSONResponse({"id": rule_id, "chain": chain, "above": above, "user": owner, "created_at": created},
                            status_code=201)

    async def get_rule(self, request: Request) -> Response:
        self.user(request)
        rule_id = request.path_params["rule_id"]
        rules = await self.db.execute(
            "SELECT id, chain, above, owner, extract(epoch FROM created_at)::float8 FROM alert_rules WHERE id = %s",
            (rule_id,))
        if not rules:
            raise ApiError(404, "not_found", f"no alert rule with id {rule_id}")
        fired = await self.db.execute(
            "SELECT id, rule_id, event_id, extract(epoch FROM ts)::float8, tvl, previous FROM alerts "
            "WHERE rule_id = %s ORDER BY ts", (rule_id,))
        r = rules[0]
        return JSONResponse({
            "rule": {"id": r[0], "chain": r[1], "above": r[2], "user": r[3], "created_at": r[4]},
            "alerts": [{"id": a[0], "rule_id": a[1], "event_id": a[2], "ts": a[3], "tvl": a[4], "previous": a[5]}
                       for a in fired],
        })

    async def stats(self, request: Request) -> Response:
        hits, misses = (int(v or 0) for v in await self.redis.mget(HITS_KEY, MISSES_KEY))
        assert self.hub is not None
        db = {}
        for name, timings in self.db_ms.items():
            ordered = sorted(timings)
            db[name] = {"count": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
                        "p95_ms": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 3)}
        return JSONResponse({
            "release": self.release,
            "cache": {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None},
            "events": {"published": self.counters["published"], "delivered": self.hub.counters["delivered"],
                       "dropped": self.hub.counters["dropped"]},
            "ws": {"open": len(self.hub.clients), "accepted": self.counters["ws_accepted"],
                   "rejected": self.counters["ws_rejected"]},
            "db": db,
        })

    # -- admin (loopback only) -------------------------------------------

    @staticmethod
    def _loopback(request: Request) -> None:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:
            raise ApiError(403, "forbidden", "/_sandbox is only served to loopback clients")

    async def faults_endpoint(self, request: Request) -> Response:
        self._loopback(request)
        if request.method == "POST":
            data = await self.body(request)
            try:
                values = self.faults.update(data)
            except ValueError as exc:
                raise ApiError(400, "bad_fault", str(exc)) from None
            log.info("faults now %s", {k: v for k, v in values.items() if v})
            return JSONResponse(values)
        if request.method == "DELETE":
            return JSONResponse(self.faults.reset())
        return JSONResponse(dict(self.faults.values))

    async def metrics(self, request: Request) -> Response:
        """What Prometheus scrapes: the function's own per-version counts (prom.py), loopback only."""
        self._loopback(request)
        body, content_type = self.emf.prom.exposition()
        return Response(body, media_type=content_type)

    async def flush_cache(self, request: Request) -> Response:
        self._loopback(request)
        deleted = 0
        async for key in self.redis.scan_iter(match=f"{CACHE_PREFIX}*", count=500):
            deleted += await self.redis.delete(key)
        await self.redis.delete(HITS_KEY, MISSES_KEY)
        return JSONResponse({"deleted": deleted})

    # -- WebSocket ---------------------------------------------------------

    async def websocket(self, websocket: WebSocket) -> None:
        assert self.hub is not None
        release_header = [(RELEASE_HEADER.encode(), self.release.encode())]
        who = invocation_of(websocket.headers)
        self.emf.count("WsConnects", who=who)
        if self.faults.roll("ws_connect_error_rate"):
            self.emf.count("WsConnectErrors", who=who)
            self.counters["ws_rejected"] += 1
            denial = _error(503, "injected", "fault ws_connect_error_rate", {RELEASE_HEADER: self.release})
            try:
                await websocket.send_denial_response(denial)
            except RuntimeError:  # server without the denial-response extension
                await websocket.close(code=1011)
            return
        if who is not None:
            release_header.append((ANNOTATIONS_HEADER.encode(), json.dumps(
                {"function_version": who.version, "release": self.release}).encode()))
        await websocket.accept(headers=release_header)
        self.counters["ws_accepted"] += 1
        client = Client(id=uuid.uuid4().hex[:12], who=who)
        self.hub.clients[client.id] = client
        writer = asyncio.create_task(self._ws_writer(websocket, client, self.emf))
        try:
            await client.queue.put({"type": "hello", "release": self.release, "connection_id": client.id,
                                    "ts": time.time(), "channels": ["tvl", "alerts"]})
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode(errors="replace")
                await client.queue.put(self._ws_reply(client, text or ""))
        finally:
            self.hub.clients.pop(client.id, None)
            writer.cancel()

    def _ws_reply(self, client: Client, text: str) -> dict[str, Any]:
        try:
            request = json.loads(text)
        except ValueError:
            return {"type": "error", "error": "messages must be JSON objects"}
        if not isinstance(request, dict):
            return {"type": "error", "error": "messages must be JSON objects"}
        action, channel = request.get("action"), request.get("channel")
        if action == "ping":
            return {"type": "pong", "id": request.get("id"), "ts": time.time(), "release": self.release}
        if action in ("subscribe", "unsubscribe"):
            if channel not in ("tvl", "alerts"):
                return {"type": "error", "error": f"unknown channel {channel!r}; channels: tvl, alerts"}
            (client.channels.add if action == "subscribe" else client.channels.discard)(channel)
            return {"type": f"{action}d", "channel": channel}
        return {"type": "error", "error": f"unknown action {action!r}; actions: subscribe, unsubscribe, ping"}

    @staticmethod
    async def _ws_writer(websocket: WebSocket, client: Client, metrics: emf.Emf) -> None:
        try:
            while True:
                message = await client.queue.get()
                event = message.get("type") == "event"
                if event:
                    metrics.count("EventsToDeliver", who=client.who)  # taken to write (hub.py counts the lost)
                await websocket.send_text(json.dumps(message))
                if event:
                    # Counted once written to the client's socket: EventsToDeliver minus this is what
                    # was lost on the way (dropped, overflowed, or failed to write).
                    metrics.count("EventsDelivered", who=client.who)
                    if isinstance(message.get("ts"), int | float):
                        metrics.value("EventDeliveryLatency", max(0.0, (time.time() - message["ts"]) * 1000.0),
                                      who=client.who)
        except Exception:  # noqa: BLE001 - the client went away; the reader sees the disconnect
            return


#: Paths that are no invocation of the function (the sandbox's admin, the metrics scrape): no fault, no count.
NOT_INVOKED = ("/_sandbox", "/metrics")


def invocation_of(headers: Any) -> emf.Invocation | None:
    """The function and version the runtime (the front door) says this invocation runs as."""
    function, version = headers.get(FUNCTION_NAME_HEADER), headers.get(FUNCTION_VERSION_HEADER)
    return emf.Invocation(function, version) if function and version else None


class ServiceMiddleware:
    """Release header on every answer, fault injection at the edge, the EMF record of each invocation,
    JSON for unexpected errors.

    The runtime's contract (sandbox/physics.py): an unhandled error is answered with
    ``X-Amz-Function-Error: Unhandled``, an invocation Lambda would have refused for
    concurrency with ``THROTTLED_HEADER`` (the function never ran: no EMF record).
    """

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        release = (RELEASE_HEADER.encode(), self.service.release.encode())
        arrived = time.perf_counter()
        who = invocation_of(Request(scope).headers)
        token = emf.current.set(who)
        status = 0
        extra: list[tuple[bytes, bytes]] = []
        if who is not None:
            # What the function writes on its trace (X-Ray: Lambda adds no version annotation itself).
            extra.append((ANNOTATIONS_HEADER.encode(), json.dumps(
                {"function_version": who.version, "release": self.service.release}).encode()))

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), release, *extra]}
            await send(message)

        path: str = scope["path"]
        faults = self.service.faults
        try:
            if not path.startswith(NOT_INVOKED):
                if path != "/health" and faults.roll("throttle_rate"):
                    # Lambda refused the invocation before the function ran: nothing of ours happens.
                    await _error(429, "throttled", headers={THROTTLED_HEADER: "1"})(scope, receive, send)
                    return
                if faults.ms("latency_ms") > 0:
                    await asyncio.sleep(faults.ms("latency_ms") / 1000.0)
                if path != "/health":
                    if faults.roll("unhandled_error_rate"):
                        raise RuntimeError("fault unhandled_error_rate: the handler raised")
                    if faults.roll("error_rate"):
                        await _error(500, "injected", "fault error_rate")(scope, receive, send_tagged)
                        return
            await self.app(scope, receive, send_tagged)
        except Exception as exc:
            log.error("%s %s failed: %s", scope.get("method"), path, redact(f"{type(exc).__name__}: {exc}"))
            if not status:
                # An unhandled error, answered the way Lambda's runtime reports one to its caller.
                extra.append((FUNCTION_ERROR_HEADER.encode(), b"Unhandled"))
                await _error(500, "internal", type(exc).__name__)(scope, receive, send_tagged)
        finally:
            if who is not None and not path.startswith(NOT_INVOKED) and status:
                self.service.emf.count("Requests", who=who)
                if status >= 500:
                    self.service.emf.count("Responses5xx", who=who)
                self.service.emf.value("Latency", (time.perf_counter() - arrived) * 1000.0, who=who)
            emf.current.reset(token)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.error, exc.detail)


def create_app(config: ServiceConfig) -> Starlette:
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    s = service
    routes = [
        Route("/health", s.health),
        Route("/auth/token", s.token, methods=["POST"]),
        Route("/chains", s.chains),
        Route("/protocols", s.protocols),
        Route("/protocols/{id:int}", s.protocol),
        Route("/tvl/{chain}", s.tvl),
        Route("/events/tvl", s.publish_tvl, methods=["POST"]),
        Route("/alerts", s.create_rule, methods=["POST"]),
        Route("/alerts/{rule_id:int}", s.get_rule),
        Route("/stats", s.stats),
        Route("/_sandbox/faults", s.faults_endpoint, methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/cache", s.flush_cache, methods=["DELETE"]),
        Route("/metrics", s.metrics),
        WebSocketRoute("/ws", s.websocket),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={ApiError: _api_error})
    app.state.service = service
    app.add_middleware(ServiceMiddleware, service=service)
    return app
