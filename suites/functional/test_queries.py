"""Functional gate: what the API answers equals the ground truth read from PostgreSQL directly.

The ground truth is written here independently of the service's SQL (max(ts)
instead of DISTINCT ON / LATERAL), so a wrong query in the service shows.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

#: How many chains and protocols are compared (every request also warms or hits the cache).
CHAINS = 3
PROTOCOL_IDS = 3
_LATEST = """
SELECT p.id, p.name, p.chain, p.category, t.tvl_usd
FROM protocols p JOIN tvl t ON t.protocol_id = p.id AND t.chain = p.chain
WHERE t.ts = (SELECT max(ts) FROM tvl t2 WHERE t2.protocol_id = p.id AND t2.chain = p.chain)
"""


@pytest.fixture(scope="module")
def truth(llama: Any) -> dict[str, Any]:
    import psycopg

    dsn = llama.resolved_targets.require("postgres_dsn")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute(_LATEST).fetchall()
    protocols = {r[0]: {"id": r[0], "name": r[1], "chain": r[2], "category": r[3], "tvl": r[4]} for r in rows}
    assert protocols, "the database has no protocols with TVL: nothing to compare the API with"
    return {"protocols": protocols, "chains": sorted({p["chain"] for p in protocols.values()})}


def _close(a: Any, b: Decimal) -> bool:
    return isinstance(a, int | float) and abs(Decimal(str(a)) - b) <= Decimal("0.01")


def _get(api: Any, api_url: str, path: str, auth: dict[str, str], where: str) -> dict[str, Any]:
    response = api.get(path, headers=auth)
    assert response.status_code == 200, (
        f"GET {api_url}{path} via {where}: expected 200, got {response.status_code} {response.text[:300]}")
    return response.json()


def test_protocols_by_chain_match_database(api: Any, api_url: str, auth: dict[str, str], truth: dict[str, Any],
                                           where: str) -> None:
    for chain in truth["chains"][:CHAINS]:
        expected = sorted((p for p in truth["protocols"].values() if p["chain"] == chain),
                          key=lambda p: (-p["tvl"], p["id"]))
        got = _get(api, api_url, f"/protocols?chain={chain}", auth, where)["protocols"]
        assert [p["id"] for p in got] == [p["id"] for p in expected], (
            f"GET {api_url}/protocols?chain={chain} via {where}: expected protocol ids (by TVL desc) "
            f"{[p['id'] for p in expected]} from PostgreSQL, got {[p.get('id') for p in got]}")
        for g, e in zip(got, expected, strict=True):
            assert g["name"] == e["name"] and g["category"] == e["category"] and _close(g["tvl"], e["tvl"]), (
                f"GET {api_url}/protocols?chain={chain} via {where}: protocol {e['id']} expected "
                f"{ {**e, 'tvl': float(e['tvl'])} } from PostgreSQL, got {g}")


def test_tvl_by_chain_matches_database(api: Any, api_url: str, auth: dict[str, str], truth: dict[str, Any],
                                       where: str) -> None:
    for chain in truth["chains"][:CHAINS]:
        members = [p for p in truth["protocols"].values() if p["chain"] == chain]
        expected = sum((p["tvl"] for p in members), Decimal(0))
        got = _get(api, api_url, f"/tvl/{chain}", auth, where)
        assert _close(got.get("tvl"), expected) and got.get("protocols") == len(members), (
            f"GET {api_url}/tvl/{chain} via {where}: expected tvl {expected} over {len(members)} protocols "
            f"(PostgreSQL), got {got}")


def test_protocol_by_id_matches_database(api: Any, api_url: str, auth: dict[str, str], truth: dict[str, Any],
                                         where: str) -> None:
    ids = sorted(truth["protocols"])
    for pid in ids[:: max(1, len(ids) // PROTOCOL_IDS)][:PROTOCOL_IDS]:
        expected = truth["protocols"][pid]
        got = _get(api, api_url, f"/protocols/{pid}", auth, where)
        assert (got.get("name"), got.get("chain")) == (expected["name"], expected["chain"]) and _close(
            got.get("tvl"), expected["tvl"]), (
            f"GET {api_url}/protocols/{pid} via {where}: expected {expected} (PostgreSQL), got {got}")
