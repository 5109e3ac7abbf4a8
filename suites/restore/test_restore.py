"""Restore gate: the data is back and matches what the backup recorded (the runbook's "Verify data integrity").

Asserts on the record ``ops.restore.run_restore`` returned in the controller,
then recomputes the database's row counts and checksums now and compares them
with the backup's (read-only).
"""

from __future__ import annotations

import pytest

from pytest_llamadeploy.ops import pg


def test_restore_succeeded(llama, record_property):
    record = llama.action_result("restore")
    record_property("backup_id", record["backup_id"])
    assert not record["errors"], "; ".join(record["errors"])
    for step in record.get("manual_steps", []):
        print(f"manual step: {step}")


def test_integrity_against_backup(llama):
    record = llama.action_result("restore")
    assert not record["integrity"], "; ".join(record["integrity"])


def test_database_still_matches_backup(llama):
    database = llama.action_result("restore").get("database") or {}
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
    restored = llama.action_result("restore")["dynamodb"]
    if not restored:
        pytest.skip("no DynamoDB table in the backup")
    client = llama.client("dynamodb")
    for item in restored:
        status = client.describe_table(TableName=item["table"])["Table"]["TableStatus"]
        assert status == "ACTIVE", f"DynamoDB table {item['table']} is {status}"
