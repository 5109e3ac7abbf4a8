"""Functional gate: an alert fires exactly once for a crossing, never without one, and is published to the alert topic."""

from __future__ import annotations

import json
import time
from typing import Any

#: After the expected alert, how long we keep listening for a duplicate.
QUIET = 1.0


def _post(api: Any, api_url: str, path: str, body: dict[str, Any], auth: dict[str, str], where: str,
          status: int = 200) -> dict[str, Any]:
    response = api.post(path, json=body, headers=auth)
    assert response.status_code == status, (
        f"POST {api_url}{path} {body} via {where}: expected {status}, got {response.status_code} {response.text[:300]}")
    return response.json()


def _queued_alerts(inbox: Any, rule_id: int, timeout: float) -> list[dict[str, Any]]:
    """Alerts of ``rule_id`` that reached the run's queue (subscribed to the alert topic) within ``timeout``."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = inbox.receive(wait=max(0, min(1, int(deadline - time.monotonic()))))
        for message in batch:
            try:
                body = json.loads(message["Body"])
            except ValueError:
                continue
            if body.get("rule_id") == rule_id:
                found[message["MessageId"]] = body
        if found and not batch:
            break
    return list(found.values())


def test_alert_fires_once_for_a_crossing(llama: Any, api: Any, api_url: str, auth: dict[str, str],
                                         subscribed: Any, fresh_chain: str, where: str, alert_inbox: Any) -> None:
    deadline = float(llama.policy.functional.alert_deadline)
    session = subscribed("alerts")
    rule = _post(api, api_url, "/alerts", {"chain": fresh_chain, "above": 150.0}, auth, where, 201)
    below = _post(api, api_url, "/events/tvl", {"chain": fresh_chain, "tvl": 100.0}, auth, where)
    crossing = _post(api, api_url, "/events/tvl", {"chain": fresh_chain, "tvl": 200.0}, auth, where)
    above = _post(api, api_url, "/events/tvl", {"chain": fresh_chain, "tvl": 300.0}, auth, where)
    assert below["alerts"] == [] and above["alerts"] == [], (
        f"rule {rule['id']} ({fresh_chain} above 150) via {where}: events 0->100 and 200->300 do not cross, "
        f"expected no alerts, got {below['alerts']} and {above['alerts']}")
    assert [a["rule_id"] for a in crossing["alerts"]] == [rule["id"]], (
        f"rule {rule['id']} ({fresh_chain} above 150) via {where}: event 100->200 crosses it, expected exactly "
        f"one alert, the POST answered {crossing['alerts']}")

    mine = lambda m: m.get("type") == "alert" and m.get("rule_id") == rule["id"]  # noqa: E731
    got = session.wait_for(mine, deadline)
    assert got is not None, (
        f"alert of rule {rule['id']} (event {crossing['id']}) did not arrive on {session.url} via {where} "
        f"within functional.alert_deadline={deadline:g}s")
    session.wait_for(lambda m: False, QUIET)
    delivered = session.all(mine)
    assert len(delivered) == 1 and delivered[0]["event_id"] == crossing["id"], (
        f"rule {rule['id']} on {session.url} via {where}: expected exactly one alert for event {crossing['id']}, "
        f"got {len(delivered)}: {delivered}")
    assert delivered[0].get("id") and delivered[0].get("ts"), f"alert without id or timestamp: {delivered[0]}"

    queued = _queued_alerts(alert_inbox, rule["id"], deadline)
    assert len(queued) == 1 and queued[0].get("event_id") == crossing["id"], (
        f"SNS topic {alert_inbox.topic_arn} (policy resources.alerts_topic), read through the run's queue "
        f"{alert_inbox.queue_url}: expected exactly one alert of rule {rule['id']} for event {crossing['id']} "
        f"within {deadline:g}s, found {len(queued)}: {queued}")


def test_no_alert_without_a_crossing(llama: Any, api: Any, api_url: str, auth: dict[str, str],
                                     fresh_chain: str, where: str) -> None:
    rule = _post(api, api_url, "/alerts", {"chain": fresh_chain, "above": 1000.0}, auth, where, 201)
    for value in (10.0, 500.0, 999.0, 1000.0, 20.0):
        event = _post(api, api_url, "/events/tvl", {"chain": fresh_chain, "tvl": value}, auth, where)
        assert event["alerts"] == [], (
            f"rule {rule['id']} ({fresh_chain} above 1000) via {where}: event {event['previous']}->{value} does "
            f"not cross it, yet alerts fired: {event['alerts']}")
    response = api.get(f"/alerts/{rule['id']}", headers=auth)
    assert response.status_code == 200 and response.json()["alerts"] == [], (
        f"GET {api_url}/alerts/{rule['id']} via {where}: expected a rule with no alerts, got "
        f"{response.status_code} {response.text[:300]}")
