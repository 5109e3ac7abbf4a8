"""PostgreSQL helpers shared by migrations, backup and restore.

A *fingerprint* is what "the schema and data are what they were" means here:
the columns and indexes of the ``public`` schema plus, per table, its row count
and an md5 over its rows in a stable order. Migrations compare fingerprints
before and after a rollback; backup records one and restore checks against it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ..redact import redact
from .results import OpsError

PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: Bookkeeping tables that change whenever a migration runs; never part of "the data".
BOOKKEEPING_TABLES = frozenset({"_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock",
                                "llamadeploy_migrations"})
CONNECT_TIMEOUT = 10


def pg_binary(name: str) -> str:
    """Path of a PostgreSQL client binary (the server's own version first, then PATH)."""
    candidate = PG_BIN / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise OpsError(f"{name} not found in {PG_BIN} or on PATH; install the PostgreSQL 15 client")
    return found


def run_tool(argv: list[str], *, env: dict[str, str], timeout: float, dsn: str, failed: str) -> None:
    """Run a PostgreSQL client tool (pg_dump, pg_restore) bounded by ``timeout``.

    A timeout names the policy key that sets it; a non-zero exit raises OpsError with
    ``failed`` and the tool's stderr, with the DSN's password masked.
    """
    import subprocess

    tool = Path(argv[0]).name
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{tool} not done after {timeout:g}s (policy key backup.timeout)") from None
    if proc.returncode != 0:
        raise OpsError(f"{failed} (exit {proc.returncode}): {redact(proc.stderr.strip(), [dsn])}")


def require_dsn(dsn: str) -> str:
    if not dsn:
        raise OpsError("no PostgreSQL DSN for this env: set targets.postgres_dsn in the policy "
                       "(e.g. ${LLAMA_POSTGRES_DSN}) or start the sandbox")
    return dsn


def conninfo(dsn: str) -> dict[str, str]:
    """The DSN's parts (URL or key=value form), as libpq parses them."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(require_dsn(dsn)).items() if v is not None}
    except Exception as exc:  # psycopg.ProgrammingError: the message may quote the DSN
        raise OpsError(f"targets.postgres_dsn is not a valid PostgreSQL DSN: {redact(str(exc), [dsn])}") from None


def client_env(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, environment with PGPASSWORD) for pg_dump/pg_restore.

    The password goes through the environment so it never shows in ``ps`` or in
    a logged command line.
    """
    from psycopg.conninfo import make_conninfo

    parts = conninfo(dsn)
    password = parts.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    parts.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    return make_conninfo(**parts), env


def yoyo_uri(dsn: str) -> str:
    """The same database as a ``postgresql+psycopg://`` URI, which is how yoyo connects."""
    parts = conninfo(dsn)
    user = parts.pop("user", "")
    password = parts.pop("password", "")
    host = parts.pop("host", "127.0.0.1")
    port = parts.pop("port", "")
    dbname = parts.pop("dbname", "")
    auth = ""
    if user:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    netloc = f"{auth}{host}{':' + port if port else ''}"
    query = f"?{urlencode(parts)}" if parts else ""
    return f"postgresql+psycopg://{netloc}/{quote(dbname, safe='')}{query}"


def connect(dsn: str, *, autocommit: bool = True) -> Any:
    import psycopg

    try:
        return psycopg.connect(require_dsn(dsn), autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        raise OpsError(f"cannot connect to PostgreSQL ({safe_dsn(dsn)}): {redact(str(exc).strip(), [dsn])}") from None


def safe_dsn(dsn: str) -> str:
    """The DSN with its password masked, for messages."""
    parts = conninfo(dsn) if dsn else {}
    password = parts.get("password", "")
    return redact(dsn, [password] if password else [])


def tables(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
    ).fetchall()
    return [r[0] for r in rows if r[0] not in BOOKKEEPING_TABLES]


def columns(conn: Any) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        if table not in BOOKKEEPING_TABLES:
            out.setdefault(table, []).append(column)
    return out


def table_stats(conn: Any, table: str, *, checksum: bool = True) -> dict[str, Any]:
    from psycopg import sql

    ident = sql.Identifier(table)
    if checksum:
        # Ordering by the row's text makes the md5 independent of physical order (VACUUM, restore).
        query = sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                        "FROM {} AS t").format(ident)
        count, digest = conn.execute(query).fetchone()
        return {"rows": int(count), "checksum": digest}
    (count,) = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
    return {"rows": int(count), "checksum": None}


def fingerprint(conn: Any, *, checksums: bool = True) -> dict[str, Any]:
    """Schema (columns with types and defaults, indexes) and per-table row counts and checksums."""
    schema = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '') "
        "FROM information_schema.columns WHERE table_schema = 'public' "
        "ORDER BY table_name, ordinal_position"
    ).fetchall()
    indexes = conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY tablename, indexname"
    ).fetchall()
    return {
        "columns": [list(r) for r in schema if r[0] not in BOOKKEEPING_TABLES],
        "indexes": [list(r) for r in indexes if r[0] not in BOOKKEEPING_TABLES],
        "tables": {t: table_stats(conn, t, checksum=checksums) for t in tables(conn)},
    }


def diff_fingerprints(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    problems: list[str] = []
    b_cols = {tuple(c[:2]): c for c in before["columns"]}
    a_cols = {tuple(c[:2]): c for c in after["columns"]}
    for key in sorted(set(b_cols) | set(a_cols)):
        if key not in a_cols:
            problems.append(f"column {key[0]}.{key[1]} is missing")
        elif key not in b_cols:
            problems.append(f"column {key[0]}.{key[1]} was added")
        elif b_cols[key] != a_cols[key]:
            problems.append(f"column {key[0]}.{key[1]} changed: {b_cols[key][2:]} -> {a_cols[key][2:]}")
    b_idx = {tuple(i[:2]): i[2] for i in before["indexes"]}
    a_idx = {tuple(i[:2]): i[2] for i in after["indexes"]}
    for key in sorted(set(b_idx) ^ set(a_idx)):
        problems.append(f"index {key[1]} on {key[0]} {'is missing' if key in b_idx else 'was added'}")
    for table in sorted(set(before["tables"]) | set(after["tables"])):
        b, a = before["tables"].get(table), after["tables"].get(table)
        if b is None:
            problems.append(f"table {table} was added")
        elif a is None:
            problems.append(f"table {table} is missing")
        elif b["rows"] != a["rows"]:
            problems.append(f"table {table}: {a['rows']} rows, expected {b['rows']}")
        elif b["checksum"] is not None and a["checksum"] is not None and b["checksum"] != a["checksum"]:
            problems.append(f"table {table}: same row count ({a['rows']}) but the data differs (md5)")
    return problems
