"""Finding 12 (migrations): every statement of a migrate stage runs with lock_timeout and statement_timeout.

A real PostgreSQL: a long transaction holds a lock on ``protocols``; a migration that
needs that table must give up after the policy's ``database.lock_timeout`` and be rolled
back, not queue behind it (and every reader of ``protocols`` behind itself) until the
transaction ends.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pytest_llamadeploy.ops.migrations import run_migrations
from tests.test_ops_support import REPO, make_ctx, new_ledger, ops_aws, ops_dsn, ops_moto_url, ops_pg  # noqa: F401

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)


@pytest.fixture
def migrate(tmp_path: Path, ops_aws, ops_dsn, monkeypatch):  # noqa: ANN001, ANN201, F811
    migdir = tmp_path / "migrations"
    shutil.copytree(REPO / "sql" / "migrations", migdir)
    monkeypatch.setenv("LLAMADEPLOY_SANDBOX_DIR", str(tmp_path / "sandbox"))
    ops_aws.client("rds").create_db_instance(DBInstanceIdentifier="defillama", Engine="postgres",
                                             DBInstanceClass="db.t3.micro", AllocatedStorage=20,
                                             MasterUsername="postgres", MasterUserPassword="not-a-secret-1")

    def ctx(extra: str = ""):  # noqa: ANN202
        database = f"database:\n  migrations_dir: {migdir}\n  expected_tables: [protocols, tvl]\n{extra}"
        return make_ctx(tmp_path, ops_aws, ops_dsn, stage="migrate", extra=database)

    return migdir, ctx


def test_a_migration_blocked_by_a_lock_gives_up_after_lock_timeout(tmp_path: Path, migrate, ops_dsn) -> None:  # noqa: ANN001, F811
    migdir, ctx = migrate
    ledger = new_ledger(tmp_path)
    assert run_migrations(ctx(), ledger)["status"] == "applied"
    (migdir / "0003_slug.sql").write_text("ALTER TABLE protocols ADD COLUMN slug text;\n")
    (migdir / "0003_slug.rollback.sql").write_text("ALTER TABLE protocols DROP COLUMN slug;\n")
    holder = psycopg.connect(ops_dsn)  # a long report query's transaction, say
    holder.execute("SELECT count(*) FROM protocols").fetchone()  # holds ACCESS SHARE until it ends
    release = threading.Timer(20.0, holder.rollback)  # bounded: without a lock timeout the migration waits 20 s
    release.start()
    try:
        started = time.monotonic()
        result = run_migrations(ctx("  lock_timeout: 1s\n"), ledger)
        took = time.monotonic() - started
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    assert took < 15, f"the migration waited {took:.0f}s for the lock"
    assert result["status"] == "rolled_back" and not result["ok"], result
    assert any("lock timeout" in e for e in result["errors"]), result["errors"]
    assert result["timeouts"] == {"lock_timeout": 1.0, "statement_timeout": 900.0}
    with psycopg.connect(ops_dsn) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'protocols'").fetchall()]
    assert "slug" not in columns


def test_the_documented_defaults_apply_when_the_policy_says_nothing(tmp_path: Path, migrate, ops_dsn) -> None:  # noqa: ANN001, F811
    from pytest_llamadeploy.ops import pg
    from pytest_llamadeploy.ops.migrations import with_timeouts

    _, ctx = migrate
    conn = pg.connect(with_timeouts(ops_dsn, ctx().policy))
    try:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in ("lock_timeout", "statement_timeout")}
    finally:
        conn.close()
    assert settings == {"lock_timeout": "10s", "statement_timeout": "15min"}
