"""Restore gate: the data is back and matches what the backup recorded (the runbook's "Verify data integrity").

Asserts on the record ``ops.restore.run_restore`` returned in the controller,
then recomputes the database's row counts and checksums now and compares them
with the backup's (read-only).
"""

from __future__ import annotations

import pytest

from pytest_llamadeploy.ops import pg


def _record(llama) -> dict:
    record = llama.watch.get("action_result")
    if not isinstance(record, dict) or record.get("kind") != "restore":
        pytest.fail(f"stage {llama.stage}: the controller recorded no restore result", pytrace=False)
    return record


def test_restore_succeeded(llama, record_property):
    record = _record(llama)
    record_property("backup_id", record["backup_id"])
    assert not record["errors"], "; ".join(record["errors"])
    for step in record.get("manual_steps", []):
        print(f"manual step: {step}")


def test_integrity_against_backup(llama):
    record = _record(llama)
    assert not record["integrity"], "; ".join(record["integrity"])


def test_database_still_matches_backup(llama):
    database = _record(llama).get("database") or {}
    if database.get("source") != "pg_dump":
        pytest.skip("the database was restored to a new RDS instance: check it once DATABASE_URL points there")
    conn = pg.connect(llama.resolved_targets.postgres_dsn)
    try:
        now = pg.fingerprint(conn)["tables"]
    finally:
        conn.close()
    differ = [t for t, stats in database["tables"].items() if now.get(t) != stats]
    assert not differ, f"tables changed since the restore: {', '.join(differ)}"


def test_dynamodb_tables_active(llama):
    restored = _record(llama)["dynamodb"]
    if not restored:
        pytest.skip("no DynamoDB table in the backup")
    client = llama.client("dynamodb")
    for item in restored:
        status = client.describe_table(TableName=item["table"])["Table"]["TableStatus"]
        assert status == "ACTIVE", f"DynamoDB table {item['table']} is {status}"
