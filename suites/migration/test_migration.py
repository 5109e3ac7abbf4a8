"""Migration gate: the migrate stage applied (or had nothing to apply), and the database shows it.

Asserts on the record ``ops.migrations.run_migrations`` returned in the
controller, then re-checks read-only: nothing is pending, no applied file
changed since, and the expected tables and columns exist (the runbook's
``\\dt`` after a migration).
"""

from __future__ import annotations

import pytest

from pytest_llamadeploy.ops import migrations, pg


def test_migrations_applied(llama, record_property):
    record = llama.action_result("migration")
    record_property("status", record["status"])
    record_property("applied", ", ".join(record["applied"]) or "none")
    if record["status"] == "rolled_back":
        pytest.fail(f"migration failed and was rolled back (schema and data unchanged): "
                    f"{'; '.join(record['errors'])}", pytrace=False)
    if record["status"] == "rollback_failed":
        pytest.fail(f"migration failed AND the rollback left the database different from before: "
                    f"{'; '.join(record['errors'] + record.get('differences', []))}; restore from backup "
                    f"{(record.get('backup') or {}).get('id')}", pytrace=False)
    assert record["ok"], f"migrate stage {record['status']}: {'; '.join(record['errors'])}"


def test_backup_taken_before_applying(llama):
    record = llama.action_result("migration")
    if not record["applied"]:
        pytest.skip("nothing was applied, so no backup was needed")
    backup = record.get("backup") or {}
    assert backup.get("ok") and backup.get("id"), f"migrations ran without a successful backup: {backup}"


def test_nothing_pending_and_no_applied_file_changed(llama):
    dsn = llama.resolved_targets.postgres_dsn
    files = migrations.discover(migrations.migrations_dir(llama.policy))
    left = migrations.pending(files, dsn)
    assert not left, f"migrations still pending: {', '.join(f.id for f in left)}"
    conn = pg.connect(dsn)
    try:
        refused, _ = migrations.changed_files(conn, files, {f.id for f in files})
    finally:
        conn.close()
    assert not refused, "; ".join(refused)


def test_expected_tables_and_columns(llama):
    conn = pg.connect(llama.resolved_targets.postgres_dsn)
    try:
        missing = migrations.verify(conn, llama.policy.database.expected_tables)
    finally:
        conn.close()
    assert not missing, "; ".join(missing)
