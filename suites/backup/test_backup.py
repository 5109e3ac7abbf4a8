"""Backup gate: every backup the stage took exists and is available, with its id recorded.

Asserts on the record ``ops.backup.run_backup`` returned in the controller and
re-reads each backup from the provider (read-only).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def test_backup_succeeded(llama, record_property):
    record = llama.action_result("backup")
    record_property("backup_id", record["id"])
    assert record["ok"], f"backup {record['id']} failed: {'; '.join(record['errors'])}"


def test_rds_snapshot_available(llama):
    rds = llama.action_result("backup").get("rds")
    if not rds:
        pytest.skip("no RDS snapshot in this backup")
    snap = llama.client("rds").describe_db_snapshots(DBSnapshotIdentifier=rds["snapshot_id"])["DBSnapshots"][0]
    assert snap["Status"] == "available", f"RDS snapshot {rds['snapshot_id']} is {snap['Status']}"
    assert snap["DBInstanceIdentifier"] == llama.policy.backup.rds_instance


def test_dynamodb_backups_available(llama):
    record = llama.action_result("backup")
    if not record["dynamodb"]:
        pytest.skip("no DynamoDB backup in this backup (--rds)")
    client = llama.client("dynamodb")
    for item in record["dynamodb"]:
        details = client.describe_backup(BackupArn=item["backup_arn"])["BackupDescription"]["BackupDetails"]
        assert details["BackupStatus"] == "AVAILABLE", f"{item['table']}: {item['backup_arn']} is {details['BackupStatus']}"


def test_sandbox_dump_restorable(llama):
    dump = llama.action_result("backup").get("pg_dump")
    if not dump:
        pytest.skip("no pg_dump (only the sandbox takes one)")
    path = Path(dump["path"])
    assert path.is_file() and path.stat().st_size == dump["bytes"] > 0, f"{path}: missing or changed since the backup"
    assert path.read_bytes()[:5] == b"PGDMP", f"{path}: not a pg_dump custom-format archive"
