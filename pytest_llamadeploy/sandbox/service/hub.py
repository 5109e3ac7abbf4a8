"""Fan-out of Redis pub/sub messages to this process's WebSocket clients.

Every release subscribes to the same Redis channels, so a client gets every
event whichever release received the POST; ``event_drop_rate`` is rolled here,
per client and message, so it hurts only the faulty release's clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from .emf import Emf, Invocation
from .faults import Faults
from .tasks import cancel_and_wait

log = logging.getLogger("llamadeploy.service")

CHANNELS = ("tvl", "alerts")
PUBSUB_PREFIX = "llama:pubsub:"
_QUEUE_LIMIT = 1000


@dataclass
class Client:
    id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(_QUEUE_LIMIT))
    channels: set[str] = field(default_factory=set)
    #: The WS function's version that accepted this connection (its EMF record counts the deliveries).
    who: Invocation | None = None


class Hub:
    def __init__(self, redis: Any, faults: Faults, metrics: Emf | None = None):
        self._redis = redis
        self._faults = faults
        self._metrics = metrics
        self.clients: dict[str, Client] = {}
        self.counters = {"delivered": 0, "dropped": 0, "overflow": 0}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="pubsub-listener")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.publish(PUBSUB_PREFIX + channel, json.dumps(message))

    def dispatch(self, channel: str, message: dict[str, Any]) -> None:
        for client in list(self.clients.values()):
            if channel not in client.channels:
                continue
            # EventsToDeliver counts an event when it is lost here (a drop, a full queue) or when the
            # client's writer takes it to write (app.py): an event still queued when its client leaves
            # was never due (the client went first), and counting it made churning clients look like
            # losses (a healthy release read 92 % under load).
            metrics = self._metrics if channel == "tvl" else None
            if self._faults.roll("event_drop_rate"):
                self.counters["dropped"] += 1
                if metrics is not None:
                    metrics.count("EventsToDeliver", who=client.who)
                continue
            try:
                client.queue.put_nowait(message)
                self.counters["delivered"] += 1
            except asyncio.QueueFull:
                # A client that does not read must not grow our memory without bound.
                self.counters["overflow"] += 1
                if metrics is not None:
                    metrics.count("EventsToDeliver", who=client.who)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*(PUBSUB_PREFIX + c for c in CHANNELS))
                self.ready.set()
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    channel = _text(msg["channel"]).removeprefix(PUBSUB_PREFIX)
                    try:
                        payload = json.loads(msg["data"])
                    except (ValueError, TypeError):
                        log.warning("ignoring a non-JSON message on %s", channel)
                        continue
                    self.dispatch(channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis went away: resubscribe, keep serving
                self.ready.clear()
                log.warning("pub/sub listener lost Redis (%s); retrying in %.1fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001
                    pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
