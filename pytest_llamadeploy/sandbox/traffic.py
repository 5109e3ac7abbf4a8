"""Background synthetic traffic so that bake windows have data to judge.

``python -m pytest_llamadeploy.sandbox.traffic --state-dir D --rate 20 --ws-clients 4 [--duration S]``

HTTP: an open-loop schedule of ``--rate`` requests per second (a request
starts on its tick whether or not earlier ones answered, as users do; at most
``--max-in-flight`` at once) over the service's read-only query endpoints
(``docs/service-contract.md``): ``/chains``, ``/protocols?chain=``,
``/protocols/{id}``, ``/tvl/{chain}`` with a bearer token, and an occasional
``/health``; and ``--event-rate`` TVL events a second on a chain of its own
(``llamadeploy-traffic``: no alert rule or functional gate uses it).
WebSocket: ``--ws-clients`` clients, each connects to ``ws_url``, reads the
hello, subscribes to ``tvl``, holds the connection ``--ws-hold`` seconds
(+-50 % jitter) and reconnects, so new connections keep being spread over the
versions by the alias weights.

Bounded: stops on SIGTERM/SIGINT, after ``--duration``, and when the
sandbox's ``state.json`` has been gone for 3 s.

Why these rates are enough (the physics, for sizing the watch's minimum samples)
--------------------------------------------------------------------------------
At ``shift10`` the new version gets 10 % of 20 req/s = **2 req/s** (per second
Binomial(20, 0.1): no request at all in 12 % of seconds, so per-second rates
are meaningless; the watch must use a sliding window of counts).

* Lambda error rate > 5 % (injected ``error_rate=0.3``): with a rule of
  ``min_samples = 10`` invocations of the new version in the window, the
  window is full after ~5 s at 2 req/s; with X errors of 10 at p = 0.3,
  P(X = 0) = 0.7^10 = 2.8 %, so a ">5 %" verdict (>= 1 error) comes with the
  first full window 97 % of the time and within the next second or two
  almost surely. A healthy sandbox release has no errors, so no false
  rollback. (With 20 samples the rule ">5 %" needs >= 2 errors: power 99.2 %
  at p = 0.3, false positives 1.7 % at a 1 % background error rate, but
  ~10 s to fill at 2 req/s; that is the right prod setting, too slow for the
  5 s goal of the sandbox unless probes add samples.)
  Note: the service exempts ``/health`` from ``error_rate`` and
  ``throttle_rate``, so probes meant to add error samples must hit a query
  endpoint (e.g. ``/chains``), not ``/health``.
* Throttle rate > 0.1 %: one throttle in fewer than 1000 invocations already
  exceeds it, so ``min_samples`` of 10 gives the same ~5 s.
* API Gateway 5xx > 10 in 5 min: a count, no rate; at 0.6 errors/s (0.3 x 2)
  it trips after ~17 s from traffic alone.
* WebSocket connect errors > 1 %: 4 clients reconnecting every ~1 s make ~4
  connects/s, 0.4/s on the new version at 10 % (2/s at 50 %). That is thin
  for a quick verdict at 10 %: with ``ws_connect_error_rate`` the watch
  should count version-targeted WebSocket probes (``probe.probe_ws(...,
  version=N)``) too, e.g. 2/s, for ~2.4 connects/s on the new version, so a
  ``min_samples`` of 5 fills in ~2 s.
* Compare (shift50, 10 s bake): ~10 req/s per version, ~100 Duration values
  per version in the window, but only 10 per-second intervals; a test on
  per-interval samples needs ``compare.min_samples`` <= 10 at this bake, or
  per-request Duration values (published as a values list).

CPU (bench/IDLE.md, measured idle): the whole sandbox without WebSocket clients,
20 req/s included, costs ~14 % of a core. Each WebSocket connect a second adds
~0.95 % (~6.5 ms of CPU per connect, mostly the handshakes in the front door,
this client and the release). ``sandbox up``'s 16 clients therefore cost about
half the idle sandbox, and that connect rate is what the WebSocket function's
per-version key metrics need at ``shift10``. Cheapen a connect before thinning
the connects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("llamadeploy.traffic")

DEFAULT_RATE = 20.0
DEFAULT_WS_CLIENTS = 4
DEFAULT_WS_HOLD = 1.0
#: TVL events published per second (POST /events/tvl on a chain of its own): every subscribed
#: WebSocket client of every release receives each, so each version's event delivery (ratio and
#: latency, docs/service-contract.md) has samples in every bake window.
DEFAULT_EVENT_RATE = 1.0
EVENT_CHAIN = "llamadeploy-traffic"
FALLBACK_CHAINS = ["Ethereum", "Arbitrum", "Polygon"]
TRAFFIC_USER = "llamadeploy-traffic"


@dataclass
class Stats:
    sent: int = 0
    skipped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    ws_connects: int = 0
    ws_errors: int = 0
    releases: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "skipped_over_limit": self.skipped, "statuses": dict(self.statuses),
                "ws_connects": self.ws_connects, "ws_errors": self.ws_errors, "releases": dict(self.releases)}


class Traffic:
    def __init__(self, api_url: str, ws_url: str, rate: float, ws_clients: int, ws_hold: float,
                 max_in_flight: int = 8, timeout: float = 5.0, seed: int | None = None,
                 event_rate: float = DEFAULT_EVENT_RATE):
        self.api_url = api_url.rstrip("/")
        self.ws_url = ws_url
        self.rate = rate
        self.ws_clients = ws_clients
        self.ws_hold = ws_hold
        self.event_rate = event_rate
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.stats = Stats()
        self.stop = asyncio.Event()
        self._rng = random.Random(seed)
        self._token: str | None = None
        self._token_expires = 0.0
        self._chains = list(FALLBACK_CHAINS)
        self._in_flight = 0
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self, duration: float | None = None) -> Stats:
        import aiohttp

        # aiohttp rather than httpx: the same requests at a fraction of the CPU (bench/FRONTDOOR.md),
        # and the background traffic runs all day beside the gates.
        connector = aiohttp.TCPConnector(limit=self.max_in_flight, use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                         cookie_jar=aiohttp.DummyCookieJar()) as client:
            await self._prime(client)
            tasks = [asyncio.create_task(self._http_loop(client))]
            if self.event_rate > 0:
                tasks.append(asyncio.create_task(self._event_loop(client)))
            if self.ws_url:
                tasks += [asyncio.create_task(self._ws_loop(i)) for i in range(self.ws_clients)]
            try:
                await asyncio.wait_for(self.stop.wait(), duration)
            except TimeoutError:
                pass
            self.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Let requests already sent finish (bounded), so the summary counts answers, not our shutdown.
            if self._pending:
                await asyncio.wait(self._pending, timeout=min(self.timeout, 3.0))
            for task in list(self._pending):
                task.cancel()
            await asyncio.gather(*self._pending, return_exceptions=True)
        return self.stats

    async def _prime(self, client: Any) -> None:
        await self._refresh_token(client)
        try:
            async with client.get(f"{self.api_url}/chains", headers=self._auth()) as response:
                chains = (await response.json()).get("chains") if response.status == 200 else None
            if chains:
                self._chains = list(chains)
        except Exception as exc:
            log.warning("cannot list chains (%s); using %s", exc, FALLBACK_CHAINS)

    async def _refresh_token(self, client: Any) -> None:
        # Until a token comes, try again at most every 5 s rather than before every request.
        self._token_expires = max(self._token_expires, time.time() + 65)
        try:
            async with client.post(f"{self.api_url}/auth/token", json={"user": TRAFFIC_USER}) as response:
                body = await response.json() if response.status == 200 else None
            if body is not None:
                self._token = body["token"]
                self._token_expires = float(body.get("expires_at", time.time() + 600))
        except Exception as exc:  # the next tick tries again; a 401 is counted meanwhile
            log.warning("cannot get a token: %s", exc)

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"} if self._token else {}

    def next_path(self) -> str:
        r = self._rng.random()
        chain = self._rng.choice(self._chains)
        if r < 0.05:
            return "/health"
        if r < 0.25:
            return "/chains"
        if r < 0.55:
            return f"/protocols?chain={chain}"
        if r < 0.75:
            return f"/protocols/{self._rng.randint(1, 200)}"
        return f"/tvl/{chain}"

    async def _http_loop(self, client: Any) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        pending = self._pending
        while not self.stop.is_set():
            if self._in_flight >= self.max_in_flight:
                self.stats.skipped += 1
            else:
                task = asyncio.create_task(self._one(client, self.next_path()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < -1.0:  # fell behind (machine busy): do not burst to catch up
                next_at = time.monotonic()
            elif delay > 0:
                await asyncio.sleep(delay)

    async def _event_loop(self, client: Any) -> None:
        """Publish a TVL event every 1/event_rate seconds, each awaited (a slow release slows this, not piles up)."""
        interval = 1.0 / self.event_rate
        while not self.stop.is_set():
            started = time.monotonic()
            await self._publish(client)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _publish(self, client: Any) -> None:
        try:
            body = {"chain": EVENT_CHAIN, "tvl": round(self._rng.uniform(1e6, 2e6), 2)}
            async with client.post(f"{self.api_url}/events/tvl", json=body, headers=self._auth()) as response:
                await response.read()
            self.stats.statuses[f"event:{response.status}"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.statuses[f"event:{type(exc).__name__}"] += 1

    async def _one(self, client: Any, path: str) -> None:
        self._in_flight += 1
        try:
            if self._token_expires - time.time() < 60:
                await self._refresh_token(client)
            async with client.get(self.api_url + path, headers=self._auth()) as response:
                await response.read()
            self.stats.statuses[str(response.status)] += 1
            self.stats.releases[response.headers.get("x-llama-release", "?")] += 1
            if response.status == 401:
                self._token_expires = 0.0
        except asyncio.CancelledError:
            self.stats.statuses["cancelled_at_stop"] += 1
            raise
        except Exception as exc:
            self.stats.statuses[type(exc).__name__] += 1
        finally:
            self.stats.sent += 1
            self._in_flight -= 1

    async def _ws_loop(self, index: int) -> None:
        from websockets.asyncio.client import connect

        # Stagger the clients so reconnects are spread over time, not in step.
        await asyncio.sleep(self.ws_hold * index / max(self.ws_clients, 1))
        while not self.stop.is_set():
            hold = self.ws_hold * self._rng.uniform(0.5, 1.5)
            try:
                # proxy=None: loopback only, and websockets otherwise reads the proxy variables of
                # the environment on every connect (~5 % of this process's CPU, bench/IDLE.md).
                async with connect(self.ws_url, open_timeout=5, close_timeout=2, compression=None,
                                   proxy=None) as ws:
                    hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    self.stats.ws_connects += 1
                    self.stats.releases[f"ws:{hello.get('release', '?')}"] += 1
                    await ws.send(json.dumps({"action": "subscribe", "channel": "tvl"}))
                    deadline = time.monotonic() + hold
                    while time.monotonic() < deadline and not self.stop.is_set():
                        try:
                            await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
                        except TimeoutError:
                            break
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.ws_errors += 1
                await asyncio.sleep(0.2 + self._rng.random() * 0.3)


async def _watch_state(state_file: Path, stop: asyncio.Event) -> None:
    missing_since: float | None = None
    while not stop.is_set():
        await asyncio.sleep(0.5)
        if state_file.exists():
            missing_since = None
        elif missing_since is None:
            missing_since = time.monotonic()
        elif time.monotonic() - missing_since > 3.0:
            log.warning("%s is gone; stopping", state_file)
            stop.set()


async def _report(traffic: Traffic, every: float) -> None:
    while not traffic.stop.is_set():
        await asyncio.sleep(every)
        print("traffic " + json.dumps(traffic.stats.summary(), sort_keys=True), flush=True)


async def amain(args: argparse.Namespace, api_url: str, ws_url: str) -> Stats:
    traffic = Traffic(api_url, ws_url, args.rate, args.ws_clients, args.ws_hold,
                      max_in_flight=args.max_in_flight, seed=args.seed, event_rate=args.event_rate)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, traffic.stop.set)
    helpers = [asyncio.create_task(_watch_state(Path(args.state_dir) / "state.json", traffic.stop)),
               asyncio.create_task(_report(traffic, args.report_every))]
    try:
        return await traffic.run(args.duration)
    finally:
        for task in helpers:
            task.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llamadeploy.sandbox.traffic",
                                     description="steady synthetic traffic through the sandbox's front door")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="HTTP requests per second")
    parser.add_argument("--ws-clients", type=int, default=DEFAULT_WS_CLIENTS)
    parser.add_argument("--ws-hold", type=float, default=DEFAULT_WS_HOLD,
                        help="seconds a WebSocket client keeps a connection before reconnecting (+-50 %%)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until stopped)")
    parser.add_argument("--event-rate", type=float, default=DEFAULT_EVENT_RATE,
                        help="TVL events published per second (0 disables; default 1)")
    # Small on purpose: an open-loop schedule with a large in-flight allowance buries a slow
    # front door (requests pile up faster than it answers, and it never recovers). At 20 req/s
    # and ~50 ms per request about 1 is in flight; beyond 8 the tick is skipped and counted.
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--report-every", type=float, default=10.0)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level="WARNING", format="traffic %(levelname)s %(message)s")
    problems = []
    if not args.rate > 0:
        problems.append(f"--rate {args.rate:g}: must be > 0 requests per second")
    if args.event_rate < 0:
        problems.append(f"--event-rate {args.event_rate:g}: must be >= 0 events per second")
    if args.ws_clients < 0:
        problems.append(f"--ws-clients {args.ws_clients}: must be >= 0")
    if not args.ws_hold > 0:
        problems.append(f"--ws-hold {args.ws_hold:g}: must be > 0 seconds")
    if args.duration is not None and not args.duration > 0:
        problems.append(f"--duration {args.duration:g}: must be > 0 seconds")
    if problems:
        parser.error("; ".join(problems))

    from .state import SandboxNotRunning, SandboxState

    try:
        state = SandboxState.load(args.state_dir)
    except SandboxNotRunning as exc:
        print(f"traffic: {exc}", file=sys.stderr)
        return 2
    if not state.api_url:
        print(f"traffic: {state.path} has no api_url; start the front door first", file=sys.stderr)
        return 2
    import uvloop

    # The C event loop: the traffic runs all day beside the gates (bench/IDLE.md).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        stats = runner.run(amain(args, state.api_url, state.ws_url))
    print("traffic done " + json.dumps(stats.summary(), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
