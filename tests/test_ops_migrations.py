"""migrate stage against a real PostgreSQL and a moto server (the backup before migrating)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from pytest_llamadeploy.ops import pg
from pytest_llamadeploy.ops.migrations import run_migrations
from tests.test_ops_support import REPO, kinds, make_ctx, new_ledger, ops_aws, ops_dsn, ops_moto_url, ops_pg  # noqa: F401

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)


@pytest.fixture
def migdir(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    shutil.copytree(REPO / "sql" / "migrations", directory)
    return directory


@pytest.fixture
def setup(tmp_path, ops_aws, ops_dsn, migdir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LLAMADEPLOY_SANDBOX_DIR", str(tmp_path / "sandbox"))
    ops_aws.client("rds").create_db_instance(DBInstanceIdentifier="defillama", Engine="postgres",
                                        DBInstanceClass="db.t3.micro", AllocatedStorage=20,
                                        MasterUsername="postgres", MasterUserPassword="not-a-secret-1")

    def ctx(expected: str = "[protocols, tvl]"):
        extra = f"database:\n  migrations_dir: {migdir}\n  expected_tables: {expected}\n"
        return make_ctx(tmp_path, ops_aws, ops_dsn, stage="migrate", extra=extra)

    return ctx


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO protocols (name, chain, category) VALUES ('aave', 'ethereum', 'lending'), "
                     "('uniswap', 'ethereum', 'dex')")
        conn.execute("INSERT INTO tvl SELECT id, chain, now(), 1000.5 FROM protocols")


def _fingerprint(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return pg.fingerprint(conn)


def test_good_migration_applies_once_then_is_a_noop(tmp_path, setup, ops_dsn):  # noqa: F811
    ledger = new_ledger(tmp_path)
    first = run_migrations(setup(), ledger)
    assert first["status"] == "applied", first["errors"]
    assert first["applied"] == ["0001_initial", "0002_tvl_by_chain_index"]
    assert first["backup"]["ok"] and first["backup"]["id"]
    fp = _fingerprint(ops_dsn)
    assert set(fp["tables"]) == {"protocols", "tvl"}
    assert any(i[1] == "tvl_chain_ts_idx" for i in fp["indexes"])

    _seed(ops_dsn)
    seeded = _fingerprint(ops_dsn)
    second = run_migrations(setup(), ledger)
    assert second["status"] == "noop" and second["ok"], second["errors"]
    assert second["applied"] == [] and "backup" not in second
    assert _fingerprint(ops_dsn) == seeded
    assert kinds(ledger) == ["backup", "migration", "migration"]
    # The backup before migrating is a real pg_dump in the sandbox.
    backup = ledger.get_artifacts("opstest", "backup")[0]
    assert Path(backup["pg_dump"]["path"]).stat().st_size > 0
    assert backup["rds"]["status"] == "available"


def test_failing_migration_is_rolled_back_with_schema_and_data_unchanged(tmp_path, setup, ops_dsn, migdir):  # noqa: F811
    assert run_migrations(setup(), new_ledger(tmp_path))["status"] == "applied"
    _seed(ops_dsn)
    (migdir / "0003_slug.sql").write_text(
        "ALTER TABLE protocols ADD COLUMN slug text;\nUPDATE protocols SET slug = lower(name), chain = 'changed';\n")
    (migdir / "0003_slug.rollback.sql").write_text(
        "UPDATE protocols SET chain = 'ethereum';\nALTER TABLE protocols DROP COLUMN slug;\n")
    (migdir / "0004_broken.sql").write_text("ALTER TABLE protocols ADD COLUMN x int;\nSELECT * FROM no_such_table;\n")
    (migdir / "0004_broken.rollback.sql").write_text("ALTER TABLE protocols DROP COLUMN x;\n")
    before = _fingerprint(ops_dsn)

    result = run_migrations(setup(), new_ledger(tmp_path))

    assert result["status"] == "rolled_back" and not result["ok"]
    assert result["applied"] == ["0003_slug"] and result["rolled_back"] == ["0003_slug"]
    assert "no_such_table" in " ".join(result["errors"])
    assert result["differences"] == []
    assert _fingerprint(ops_dsn) == before
    with psycopg.connect(ops_dsn) as conn:
        ids = {r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration")}
        recorded = {r[0] for r in conn.execute("SELECT migration_id FROM llamadeploy_migrations")}
    assert ids == recorded == {"0001_initial", "0002_tvl_by_chain_index"}


def test_failed_verification_rolls_back_what_this_run_applied(tmp_path, setup, ops_dsn):  # noqa: F811
    result = run_migrations(setup("[protocols, tvl, protocols.slug]"), new_ledger(tmp_path))
    assert result["status"] == "rolled_back"
    assert result["verify_errors"] == ["column protocols.slug is missing (policy key database.expected_tables)"]
    assert result["rolled_back"] == ["0002_tvl_by_chain_index", "0001_initial"]
    assert _fingerprint(ops_dsn)["tables"] == {}


def test_changed_applied_migration_is_refused(tmp_path, setup, ops_dsn, migdir):  # noqa: F811
    assert run_migrations(setup(), new_ledger(tmp_path))["status"] == "applied"
    _seed(ops_dsn)
    before = _fingerprint(ops_dsn)
    path = migdir / "0001_initial.sql"
    path.write_text(path.read_text().replace("category text", "category text, website text"))
    (migdir / "0003_more.sql").write_text("ALTER TABLE protocols ADD COLUMN z int;\n")
    (migdir / "0003_more.rollback.sql").write_text("ALTER TABLE protocols DROP COLUMN z;\n")

    ledger = new_ledger(tmp_path)
    result = run_migrations(setup(), ledger)

    assert result["status"] == "refused" and not result["ok"]
    assert "0001_initial.sql: changed after it was applied" in result["errors"][0]
    assert result["applied"] == []
    assert _fingerprint(ops_dsn) == before
    assert kinds(ledger) == ["migration"]  # refused before any backup


def test_migration_without_rollback_file_is_refused(tmp_path, setup, ops_dsn, migdir):  # noqa: F811
    (migdir / "0003_orphan.sql").write_text("ALTER TABLE protocols ADD COLUMN z int;\n")
    result = run_migrations(setup(), new_ledger(tmp_path))
    assert result["status"] == "refused"
    assert any("0003_orphan.sql: no rollback file; write 0003_orphan.rollback.sql" in e for e in result["errors"])
    assert _fingerprint(ops_dsn)["tables"] == {}


def _create_baseline_by_hand(dsn: str, migdir: Path) -> None:
    """The schema as a database that predates managed migrations has it (production, the sandbox)."""
    body = (migdir / "0001_initial.sql").read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(body)


def test_existing_baseline_schema_is_adopted_never_run_and_never_rolled_back(tmp_path, setup, ops_dsn, migdir):  # noqa: F811
    _create_baseline_by_hand(ops_dsn, migdir)
    _seed(ops_dsn)
    (migdir / "0003_broken.sql").write_text("SELECT * FROM no_such_table;\n")
    (migdir / "0003_broken.rollback.sql").write_text("SELECT 1;\n")
    before = _fingerprint(ops_dsn)

    result = run_migrations(setup(), new_ledger(tmp_path))

    # 0001 was adopted (its CREATE TABLEs would fail), 0002 applied, 0003 failed: only 0002 is rolled back.
    assert result["baselined"] == ["0001_initial"]
    assert result["status"] == "rolled_back", result["errors"]
    assert result["applied"] == ["0002_tvl_by_chain_index"] and result["rolled_back"] == ["0002_tvl_by_chain_index"]
    assert _fingerprint(ops_dsn) == before, "the baseline's rollback file must never run on adopted tables"
    with psycopg.connect(ops_dsn) as conn:
        marked = {r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration")}
        release = conn.execute("SELECT release FROM llamadeploy_migrations WHERE migration_id = '0001_initial'")
        assert release.fetchone()[0] == "(baseline: existing schema adopted)"
        probe = conn.execute("SELECT to_regnamespace('llamadeploy_baseline_probe')").fetchone()[0]
    assert marked == {"0001_initial"} and probe is None

    (migdir / "0003_broken.sql").unlink()
    (migdir / "0003_broken.rollback.sql").unlink()
    again = run_migrations(setup(), new_ledger(tmp_path))
    assert again["status"] == "applied" and again["baselined"] == [] and again["applied"] == ["0002_tvl_by_chain_index"]


def test_partial_baseline_schema_is_refused_naming_the_differences(tmp_path, setup, ops_dsn):  # noqa: F811
    with psycopg.connect(ops_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE protocols (id serial PRIMARY KEY, name text NOT NULL UNIQUE, chain text)")
    before = _fingerprint(ops_dsn)

    result = run_migrations(setup(), new_ledger(tmp_path))

    assert result["status"] == "refused" and result["applied"] == []
    text = result["errors"][0]
    assert "0001_initial.sql is a baseline" in text and "table tvl is missing" in text
    assert "table protocols has (id integer not null, name text not null, chain text)" in text
    assert _fingerprint(ops_dsn) == before
