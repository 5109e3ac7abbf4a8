"""PostgreSQL access of the reference service: a small async pool, the schema, the named queries.

The SQL of the queries the performance gate times lives in
``REPRESENTATIVE_QUERIES`` so the gate runs exactly what the service runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg

# The latest TVL of each protocol on its chain (the tvl table is a time series).
_LATEST = ("JOIN LATERAL (SELECT tvl_usd FROM tvl WHERE tvl.protocol_id = p.id AND tvl.chain = p.chain "
           "ORDER BY ts DESC LIMIT 1) t ON true")

QUERIES: dict[str, str] = {
    "protocols_by_chain": (
        f"SELECT p.id, p.name, p.chain, p.category, t.tvl_usd FROM protocols p {_LATEST} "
        "WHERE p.chain = %s ORDER BY t.tvl_usd DESC, p.id"
    ),
    "tvl_by_chain": (
        "SELECT chain, sum(tvl_usd), count(*) FROM ("
        "SELECT DISTINCT ON (protocol_id) chain, protocol_id, tvl_usd FROM tvl WHERE chain = %s "
        "ORDER BY protocol_id, ts DESC) latest GROUP BY chain"
    ),
    "all_protocols": (
        f"SELECT p.id, p.name, p.chain, p.category, t.tvl_usd FROM protocols p {_LATEST} "
        "ORDER BY t.tvl_usd DESC, p.id"
    ),
    "protocol_by_id": f"SELECT p.id, p.name, p.chain, p.category, t.tvl_usd FROM protocols p {_LATEST} WHERE p.id = %s",
    "chains": "SELECT DISTINCT chain FROM protocols ORDER BY chain",
}

#: name -> (SQL, example parameters): the queries the performance gate times against the database.
REPRESENTATIVE_QUERIES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "protocols_by_chain": (QUERIES["protocols_by_chain"], ("Ethereum",)),
    "tvl_by_chain": (QUERIES["tvl_by_chain"], ("Ethereum",)),
}

#: A query's time *in the database*: ``clock_timestamp()`` read just before and just after it,
#: sent with it in one pipeline so the server runs the three back to back. A client's own
#: delays (a busy event loop, a descheduled process on a loaded host) are not in the figure,
#: which measured 50-100 ms of them around 5 ms queries while CI ran tests in parallel.
CLOCK = "SELECT clock_timestamp()"


def ms_between(before: Any, after: Any) -> float:
    """Milliseconds between two ``(clock_timestamp,)`` rows."""
    return (after[0] - before[0]).total_seconds() * 1000.0


def fetch_timed(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], float]:
    """Rows of ``sql`` and its time in the database (ms), on a synchronous connection (see CLOCK)."""
    with conn.pipeline():
        before = conn.execute(CLOCK)
        cur = conn.execute(sql, tuple(params))
        after = conn.execute(CLOCK)
    rows = cur.fetchall()
    return rows, ms_between(before.fetchone(), after.fetchone())


#: Serialises schema + seed across releases starting at the same time.
_SCHEMA_LOCK = 0x11A4A


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text()


def ensure_schema(dsn: str) -> None:
    """Schema and seed, synchronously (``llamadeploy sandbox up`` calls this before any release starts)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema_sql())


def protocol_row(row: Sequence[Any]) -> dict[str, Any]:
    return {"id": row[0], "name": row[1], "chain": row[2], "category": row[3], "tvl": float(row[4])}


class Database:
    """A few autocommit connections shared by the requests of one process."""

    def __init__(self, dsn: str, size: int = 8, timeout: float = 5.0):
        self._dsn = dsn
        self._size = size
        self._timeout = timeout
        self._idle: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
        self._slots = asyncio.Semaphore(size)

    async def apply_schema(self) -> None:
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute(schema_sql())

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        await asyncio.wait_for(self._slots.acquire(), self._timeout)
        conn = None
        try:
            while not self._idle.empty():
                candidate = self._idle.get_nowait()
                if not candidate.closed:
                    conn = candidate
                    break
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=int(self._timeout))
            yield conn
        except BaseException:
            # A connection that saw an error may be mid-protocol: do not reuse it.
            if conn is not None:
                await conn.close()
                conn = None
            raise
        finally:
            if conn is not None:
                self._idle.put_nowait(conn)
            self._slots.release()

    async def fetch(self, name: str, params: Sequence[Any] = (), slow_ms: float = 0.0) -> tuple[list[tuple[Any, ...]], float]:
        """Rows of named query ``name`` and its time in the database (ms; see CLOCK).

        ``slow_ms`` is the slow_query_ms fault: a pg_sleep on the same connection, timed with the query.
        """
        async with self.connection() as conn:
            async with conn.pipeline():
                before = await conn.execute(CLOCK)
                if slow_ms > 0:
                    await conn.execute("SELECT pg_sleep(%s)", (slow_ms / 1000.0,))
                cur = await conn.execute(QUERIES[name], tuple(params))
                after = await conn.execute(CLOCK)
            rows = await cur.fetchall()
            return rows, ms_between(await before.fetchone(), await after.fetchone())

    async def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        while not self._idle.empty():
            await self._idle.get_nowait().close()
