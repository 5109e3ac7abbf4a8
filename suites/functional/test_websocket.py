"""Functional gate: WebSocket connections open, stay open, and deliver events in time."""

from __future__ import annotations

import time
from typing import Any

#: How long a connection must stay usable, and how often it is pinged meanwhile.
HOLD_SECONDS = 3.0
PING_EVERY = 0.5
#: Events published by the delivery check (see its docstring).
EVENTS = 5


def test_connection_opens_and_stays_open(llama: Any, ws_connect: Any, where: str) -> None:
    session = ws_connect()
    hello = session.wait_for(lambda m: m.get("type") == "hello", 5.0)
    assert hello is not None, f"WebSocket {session.url} via {where}: no hello within 5s of connecting"
    assert hello[1].get("release"), f"WebSocket {session.url} via {where}: hello names no release: {hello[1]}"
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < HOLD_SECONDS:
        sent += 1
        session.send({"action": "ping", "id": sent})
        pong = session.wait_for(lambda m, n=sent: m.get("type") == "pong" and m.get("id") == n, 2.0)
        assert pong is not None, (
            f"WebSocket {session.url} via {where}: ping {sent} after {time.monotonic() - start:.1f}s of "
            f"{HOLD_SECONDS:g}s got no pong within 2s (connection dropped or stalled)")
        time.sleep(max(0.0, PING_EVERY - (time.monotonic() - pong[0])))


def test_event_arrives_within_deadline(llama: Any, api: Any, api_url: str, auth: dict[str, str],
                                       subscribed: Any, fresh_chain: str, where: str) -> None:
    """Every one of EVENTS events published now arrives, each within the policy deadline.

    Several, not one: a release that loses half its events would pass a single-event
    check half the time; with 5 it passes 3 % of the time (the performance suite
    measures the loss rate itself under load).
    """
    deadline = float(llama.policy.functional.event_deadline)
    session = subscribed("tvl")
    for n in range(EVENTS):
        tvl = 42.0 + n
        sent_at = time.monotonic()
        response = api.post("/events/tvl", json={"chain": fresh_chain, "tvl": tvl}, headers=auth)
        assert response.status_code == 200, (
            f"POST {api_url}/events/tvl via {where}: expected 200, got {response.status_code} {response.text[:300]}")
        event_id = response.json()["id"]
        got = session.wait_for(lambda m, i=event_id: m.get("type") == "event" and m.get("id") == i, deadline)
        assert got is not None, (
            f"event delivery: event {event_id} ({fresh_chain}, {n + 1} of {EVENTS}) published via POST "
            f"{api_url}/events/tvl did not arrive on {session.url} via {where} within "
            f"functional.event_deadline={deadline:g}s; received instead: {[m for _, m in session.received][-5:]}")
        arrived, event = got
        assert event.get("chain") == fresh_chain and event.get("tvl") == tvl, (
            f"event {event_id} on {session.url}: expected chain {fresh_chain} tvl {tvl:g}, got {event}")
        assert event.get("ts"), f"event {event_id} on {session.url} carries no timestamp: {event}"
        print(f"event {event_id} delivered {1000 * (arrived - sent_at):.1f} ms after the POST started")
