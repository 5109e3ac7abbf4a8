"""The performance suite's load: API queries plus WebSocket subscribers timing real-time events.

Run by Locust only, never imported by pytest (gevent patches the process).
Self-contained on purpose: a worker machine needs only ``locust`` and
``websocket-client``, not this package. Standalone::

    locust -f pytest_llamadeploy/load/locustfile.py --headless -u 20 -r 10 -t 60s --host https://api.example

Environment (all optional):

``LLAMA_WS_URL``              WebSocket URL (default: the host with ws(s):// and path /ws)
``LLAMA_LOAD_PACING``         seconds between the starts of one user's tasks (default 0.2; 0 = no wait)
``LLAMA_LOAD_HEADERS``        JSON object of extra headers for HTTP and the WebSocket handshake
                              (e.g. ``{"x-llama-version": "4"}`` to target one version in the sandbox)
``LLAMA_LOAD_CHAINS``         comma-separated chains to query (default: ``GET /chains``)
``LLAMA_LOAD_EVENT_CHAIN``    chain the load publishes TVL events for (default ``llamadeploy-load``,
                              a chain no alert rule of real users watches); empty: publish none
                              (a read-only load, where the policy does not let the suite write)
``LLAMA_LOAD_EVENT_DEADLINE`` seconds after which a published event that never arrived counts as lost (default 5)

Stats names (the gates select on them): HTTP requests by method and path;
``WS tvl event`` = delivery latency of each event received (receive time - the
event's ``ts``; client and server clocks must agree, as NTP keeps them);
``WSCONNECT /ws`` = handshake until ``subscribed``; ``... (fresh)`` = a query read with
``Cache-Control: no-cache`` (a database read each). The WebSocket client is
``websocket-client``: its blocking sockets cooperate with gevent, whereas the
``websockets`` sync client aborts the process in libev when a connection closes.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import websocket
from locust import FastHttpUser, constant, task

WS_EVENT = "WS"
#: Suffix of the names of fresh (uncached) reads; the gate counts them to bound the service's query timings.
FRESH = "(fresh)"
WS_CONNECT = "WSCONNECT"
#: Seconds between reconnect attempts after a failed WebSocket handshake.
RECONNECT_BACKOFF = 0.5
_ids = itertools.count(1)


def _pacing() -> Any:
    raw = os.environ.get("LLAMA_LOAD_PACING", "0.2")
    try:
        seconds = float(raw)
    except ValueError:
        raise SystemExit(f"LLAMA_LOAD_PACING={raw!r}: expected seconds, e.g. 0.2 (0 = no wait)") from None
    return constant(0) if seconds <= 0 else phased_pacing(seconds)


def phased_pacing(seconds: float) -> Any:
    """One task start every ``seconds`` per user, each user on a random phase of its own.

    Locust's ``constant_pacing`` keeps the phase users were spawned with, and users spawned
    together (``-r`` = ``-u``) or ``1/r`` apart with ``1/r`` = the pacing fire in lockstep:
    every 0.2 s, all of them at once. A burst of N requests then waits on itself (38 users:
    p50 25 ms against one release whose single request takes 2 ms, bench/FRONTDOOR.md), a
    queue no population of independent users makes. A random phase per user spreads the
    same rate evenly; a user that falls behind starts its next task at once, without a
    burst to catch up.
    """

    def wait_time(user: Any) -> float:
        now = time.perf_counter()
        due = getattr(user, "_llama_due", None)
        due = now + random.uniform(0.0, seconds) if due is None else max(now, due + seconds)
        user._llama_due = due
        return due - now

    return wait_time


def _extra_headers() -> dict[str, str]:
    raw = os.environ.get("LLAMA_LOAD_HEADERS", "")
    if not raw:
        return {}
    try:
        headers = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"LLAMA_LOAD_HEADERS is not JSON ({exc}); expected e.g. {{\"x-llama-version\": \"4\"}}") from None
    if not isinstance(headers, dict):
        raise SystemExit("LLAMA_LOAD_HEADERS must be a JSON object of header: value")
    return {str(k): str(v) for k, v in headers.items()}


def ws_url_for(host: str, configured: str = "") -> str:
    """``LLAMA_WS_URL`` as given, with ``/ws`` added when it has no path; else derived from the API host."""
    base = configured or host
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class _Authenticated(FastHttpUser):
    abstract = True
    wait_time = _pacing()
    # A gate measures latency; a request stuck for a minute is a failure, not a sample.
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.extra_headers = _extra_headers()
        self.headers = dict(self.extra_headers)
        user = f"load{os.getpid()}x{next(_ids)}"
        with self.client.post("/auth/token", json={"user": user}, headers=self.extra_headers,
                              name="/auth/token", catch_response=True) as resp:
            token = (resp.json() or {}).get("token") if resp.status_code == 200 else None
            if not token:
                resp.failure(f"no token: HTTP {resp.status_code}")
                return
        self.headers["Authorization"] = f"Bearer {token}"


class ApiUser(_Authenticated):
    """Reads, the way dashboards do: protocols and TVL by chain (cache-friendly, like production)."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        configured = [c.strip() for c in os.environ.get("LLAMA_LOAD_CHAINS", "").split(",") if c.strip()]
        self.chains = configured
        if not self.chains:
            with self.client.get("/chains", headers=self.headers, name="/chains", catch_response=True) as resp:
                chains = (resp.json() or {}).get("chains") if resp.status_code == 200 else None
                if not chains:
                    resp.failure(f"no chains: HTTP {resp.status_code}")
                self.chains = chains or ["Ethereum"]

    @task(3)
    def protocols_by_chain(self) -> None:
        self.client.get(f"/protocols?chain={random.choice(self.chains)}", headers=self.headers,
                        name="/protocols?chain=[chain]")

    @task(3)
    def tvl_by_chain(self) -> None:
        self.client.get(f"/tvl/{random.choice(self.chains)}", headers=self.headers, name="/tvl/[chain]")

    @task(1)
    def chains_list(self) -> None:
        self.client.get("/chains", headers=self.headers, name="/chains")

    @task(1)
    def fresh_read(self) -> None:
        """A representative query read fresh (``Cache-Control: no-cache``), as a dashboard's refresh does.

        With a warm cache a load might cause no database read at all, and the
        release's own query time would go unmeasured; these reads sample it
        (counted as neither hit nor miss, so the cache hit rate is the other reads').
        """
        chain = random.choice(self.chains)
        headers = {**self.headers, "Cache-Control": "no-cache"}
        if random.random() < 0.5:
            self.client.get(f"/protocols?chain={chain}", headers=headers, name=f"/protocols?chain=[chain] {FRESH}")
        else:
            self.client.get(f"/tvl/{chain}", headers=headers, name=f"/tvl/[chain] {FRESH}")


class EventsUser(_Authenticated):
    """Holds a subscribed WebSocket and publishes TVL events; a reader greenlet times every event it receives.

    Reading continuously (not only inside a task) keeps the user's idle time
    out of the measured delivery latency.
    """

    weight = 1

    def on_start(self) -> None:
        # Set before anything can block: a load that stops during the token request still calls on_stop.
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.published: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.retry_at = 0.0
        super().on_start()
        self.deadline = float(os.environ.get("LLAMA_LOAD_EVENT_DEADLINE", "5"))
        self.chain = os.environ.get("LLAMA_LOAD_EVENT_CHAIN", "llamadeploy-load")
        self.url = ws_url_for(self.host or "", os.environ.get("LLAMA_WS_URL", ""))
        self._connect()

    def on_stop(self) -> None:
        ws, self.ws = self.ws, None
        if self.reader is not None:
            self.reader.kill(block=False)
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception:  # noqa: BLE001 - closing a dead socket during shutdown
                pass

    def _fire(self, request_type: str, name: str, response_time: float | None, length: int = 0,
              exception: BaseException | None = None) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=response_time,
                                             response_length=length, exception=exception, context={})

    def _connect(self) -> None:
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(self.url, timeout=5,
                                             header=[f"{k}: {v}" for k, v in self.extra_headers.items()])
            hello = json.loads(ws.recv())
            if hello.get("type") != "hello":
                raise ConnectionError(f"first message is not hello: {hello!r:.120}")
            ws.send(json.dumps({"action": "subscribe", "channel": "tvl"}))
            while True:
                reply = json.loads(ws.recv())
                if reply.get("type") == "subscribed":
                    break
        except Exception as exc:  # noqa: BLE001 - every handshake failure is a failed connect sample
            self._fire(WS_CONNECT, "/ws", (time.perf_counter() - started) * 1000, exception=exc)
            self.ws = None
            return
        self._fire(WS_CONNECT, "/ws", (time.perf_counter() - started) * 1000)
        ws.settimeout(1.0)
        self.ws = ws
        self.reader = gevent.spawn(self._read, ws)

    def _read(self, ws: websocket.WebSocket) -> None:
        while self.ws is ws:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as exc:  # noqa: BLE001 - a dropped connection is reconnected by the next task
                if self.ws is ws:
                    self._fire(WS_CONNECT, "/ws dropped", None, exception=exc)
                    self.ws = None
                return
            received = time.time()
            try:
                message = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if message.get("type") != "event":
                continue
            latency = max(0.0, (received - float(message.get("ts") or received)) * 1000)
            self._fire(WS_EVENT, "tvl event", latency, len(raw))
            if message.get("id") is not None:
                self.seen[str(message["id"])] = received

    @task
    def publish_event(self) -> None:
        if not self.chain:  # a read-only load: no event is published, none is timed
            return
        self._account_lost()
        if self.ws is None:
            # Back off after a failed handshake, as real clients do: retrying on every task would turn a
            # refusing release into a handshake storm that slows the API samples of the same load.
            if time.monotonic() < self.retry_at:
                return
            self._connect()
            if self.ws is None:
                self.retry_at = time.monotonic() + RECONNECT_BACKOFF
                return
        with self.client.post("/events/tvl", json={"chain": self.chain, "tvl": round(random.uniform(1e6, 2e6), 2)},
                              headers=self.headers, name="/events/tvl", catch_response=True) as resp:
            event_id = (resp.json() or {}).get("id") if resp.status_code == 200 else None
            if event_id is None:
                resp.failure(f"no event id: HTTP {resp.status_code}")
                return
        self.published[str(event_id)] = time.time()

    def _account_lost(self) -> None:
        now = time.time()
        for event_id, at in list(self.published.items()):
            if event_id in self.seen:
                del self.published[event_id]
            elif now - at > self.deadline:
                del self.published[event_id]
                # No response time: a lost event is a failure, not a latency sample.
                self._fire(WS_EVENT, "tvl event", None,
                           exception=TimeoutError(f"event {event_id} not received within {self.deadline:g}s"))
        for event_id, at in list(self.seen.items()):
            if now - at > 2 * self.deadline:
                del self.seen[event_id]
