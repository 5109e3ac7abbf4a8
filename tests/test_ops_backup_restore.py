"""backup then emergency restore round-trip data: pg_dump/pg_restore and DynamoDB backup/restore."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from pytest_llamadeploy.ops import pg
from pytest_llamadeploy.ops.backup import run_backup
from pytest_llamadeploy.ops.restore import run_restore
from pytest_llamadeploy.ops.results import OpsError
from tests.test_ops_support import REPO, kinds, make_ctx, new_ledger, ops_aws, ops_dsn, ops_moto_url, ops_pg  # noqa: F401

pytestmark = pytest.mark.sandbox  # starts moto, services or gate runs (tests/conftest.py)


@pytest.fixture
def ctx(tmp_path, ops_aws, ops_dsn, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LLAMADEPLOY_SANDBOX_DIR", str(tmp_path / "sandbox"))
    ops_aws.client("rds").create_db_instance(DBInstanceIdentifier="defillama", Engine="postgres",
                                        DBInstanceClass="db.t3.micro", AllocatedStorage=20,
                                        MasterUsername="postgres", MasterUserPassword="not-a-secret-1")
    ddb = ops_aws.client("dynamodb")
    ddb.create_table(TableName="onchain-alerts", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    for i in range(5):
        ddb.put_item(TableName="onchain-alerts", Item={"id": {"S": f"a{i}"}, "threshold": {"N": str(i * 10)}})
    with psycopg.connect(ops_dsn, autocommit=True) as conn:
        conn.execute((REPO / "sql/migrations/0001_initial.sql").read_text())
        conn.execute("INSERT INTO protocols (name, chain) SELECT 'p' || g, 'ethereum' FROM generate_series(1, 50) g")
        conn.execute("INSERT INTO tvl SELECT id, chain, now(), id * 3.5 FROM protocols")
    return make_ctx(tmp_path, ops_aws, ops_dsn, stage="backup")


def _items(aws) -> list[dict]:
    items = aws.client("dynamodb").scan(TableName="onchain-alerts", ConsistentRead=True)["Items"]
    return sorted(items, key=lambda i: i["id"]["S"])


def _fingerprint(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return pg.fingerprint(conn)


def test_backup_then_restore_round_trips_database_and_dynamodb(tmp_path, ctx, ops_aws, ops_dsn):  # noqa: F811
    ledger = new_ledger(tmp_path)
    items_before, db_before = _items(ops_aws), _fingerprint(ops_dsn)

    backup = run_backup(ctx, ledger, rds=True, dynamodb=True)

    assert backup["ok"], backup["errors"]
    assert backup["rds"]["snapshot_id"] == backup["id"] and backup["rds"]["status"] == "available"
    assert backup["dynamodb"][0]["status"] == "AVAILABLE" and backup["dynamodb"][0]["items"] == 5
    assert Path(backup["pg_dump"]["path"]).stat().st_size > 0
    assert backup["database"]["tables"] == db_before["tables"]
    snaps = ops_aws.client("rds").describe_db_snapshots(DBSnapshotIdentifier=backup["id"])["DBSnapshots"]
    assert snaps[0]["DBInstanceIdentifier"] == "defillama"

    # Data loss: rows deleted and changed, a DynamoDB item lost and another written.
    with psycopg.connect(ops_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM tvl WHERE protocol_id > 10")
        conn.execute("UPDATE protocols SET chain = 'lost' WHERE id < 5")
    ddb = ops_aws.client("dynamodb")
    ddb.delete_item(TableName="onchain-alerts", Key={"id": {"S": "a1"}})
    ddb.put_item(TableName="onchain-alerts", Item={"id": {"S": "junk"}})
    assert _fingerprint(ops_dsn) != db_before and _items(ops_aws) != items_before

    restored = run_restore(ctx, ledger, backup_id=None)

    assert restored["ok"], (restored["errors"], restored["integrity"])
    assert restored["backup_id"] == backup["id"] and restored["integrity"] == []
    assert _fingerprint(ops_dsn) == db_before
    assert _items(ops_aws) == items_before
    safety = restored["dynamodb"][0]["pre_restore_backup_arn"]
    assert ddb.describe_backup(BackupArn=safety)["BackupDescription"]["BackupDetails"]["BackupStatus"] == "AVAILABLE"
    assert kinds(ledger) == ["backup", "restore"]


def test_restore_reports_integrity_mismatch(tmp_path, ctx, ops_aws, ops_dsn):  # noqa: F811
    ledger = new_ledger(tmp_path)
    backup = run_backup(ctx, ledger, rds=True, dynamodb=False)
    with psycopg.connect(ops_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM tvl WHERE protocol_id > 40")
    later = run_backup(ctx, ledger, rds=True, dynamodb=False)
    # The first backup's dump is silently replaced by a later one: the check must notice.
    shutil.copyfile(later["pg_dump"]["path"], backup["pg_dump"]["path"])

    restored = run_restore(ctx, ledger, backup_id=backup["id"])

    assert not restored["ok"]
    assert restored["integrity"] == ["table tvl: 40 rows after restore, 50 at backup"]


def test_backup_names_the_missing_instance_and_restore_the_unknown_id(tmp_path, ctx, ops_aws):  # noqa: F811
    ops_aws.client("rds").delete_db_instance(DBInstanceIdentifier="defillama", SkipFinalSnapshot=True)
    ledger = new_ledger(tmp_path)
    backup = run_backup(ctx, ledger, rds=True, dynamodb=False)
    assert not backup["ok"]
    assert "RDS instance 'defillama' not found (policy key backup.rds_instance)" in backup["errors"]
    with pytest.raises(OpsError, match="no backup 'nope' recorded for env 'opstest'"):
        run_restore(ctx, ledger, backup_id="nope")
    with pytest.raises(OpsError, match="no successful backup recorded"):
        run_restore(ctx, ledger, backup_id=None)
