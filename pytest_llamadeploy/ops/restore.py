"""Emergency restore (the runbook's "Data Loss: restore from most recent backup, verify data integrity").

DynamoDB: the table is restored *under its own name* after deleting it.
DynamoDB cannot rename a table, and every function's configuration names the
table, so "restore to a new name then swap" would mean redeploying the
functions in the middle of an incident. To keep the step reversible, the
current table is first backed up (``pre-restore-...``, recorded) before it is
deleted.

Database: in the sandbox, ``pg_restore --clean --if-exists --single-transaction``
of the recorded pg_dump (all or nothing). On AWS, a new instance from the
recorded RDS snapshot (``restore_db_instance_from_db_snapshot``): RDS cannot
restore in place, so repointing the application at the new endpoint stays a
manual step, which the record says.

Then the integrity check: row counts and checksums per table (and item counts
and checksums per DynamoDB table) against the values recorded at backup time.
"""

from __future__ import annotations

import time
from typing import Any

from . import dynamo, pg
from .backup import backup_id
from .results import Ledger, OpsError, poll


def find_backup(ledger: Ledger, env: str, backup_id_: str | None) -> dict[str, Any]:
    """The recorded backup named by id, RDS snapshot id or DynamoDB backup ARN; the newest when None."""
    records = ledger.get_artifacts(env, "backup")
    usable = [r for r in records if r.get("ok")]
    if backup_id_ is None:
        if not usable:
            raise OpsError(f"no successful backup recorded for env {env!r}; take one with the backup stage first")
        return usable[0]
    for r in records:
        ids = {r.get("id"), (r.get("rds") or {}).get("snapshot_id")} | {d.get("backup_arn") for d in r.get("dynamodb", [])}
        if backup_id_ in ids:
            if not r.get("ok"):
                raise OpsError(f"backup {backup_id_!r} is recorded as failed ({'; '.join(r.get('errors', []))}); "
                               "pick another with --backup-id")
            return r
    known = ", ".join(str(r.get("id")) for r in usable[:10]) or "(none)"
    raise OpsError(f"no backup {backup_id_!r} recorded for env {env!r}; recorded: {known}")


def run_restore(ctx: Any, ledger: Ledger, *, backup_id: str | None) -> dict[str, Any]:
    """Restore DynamoDB tables and the database from a recorded backup, then check integrity."""
    policy = ctx.policy
    backup = find_backup(ledger, ctx.env, backup_id)
    timeout = policy.backup.timeout
    started = time.time()
    record: dict[str, Any] = {
        "kind": "restore", "env": ctx.env, "release": ctx.release, "backup_id": backup["id"],
        "backup_created_at": backup.get("created_at"), "started_at": started,
        "dynamodb": [], "database": None, "integrity": [], "errors": [], "manual_steps": [],
    }
    if backup.get("dynamodb"):
        client = ctx.client("dynamodb")
        for item in backup["dynamodb"]:
            try:
                record["dynamodb"].append(_restore_table(client, item, ctx, timeout))
            except (OpsError, TimeoutError) as exc:
                record["errors"].append(str(exc))
    if backup.get("pg_dump"):
        try:
            record["database"] = _pg_restore(ctx.resolved_targets.postgres_dsn, backup, timeout)
        except (OpsError, TimeoutError) as exc:
            record["errors"].append(str(exc))
    elif backup.get("rds"):
        try:
            record["database"] = _rds_restore(ctx.client("rds"), backup["rds"], timeout)
            record["manual_steps"].append(
                f"point DATABASE_URL at {record['database']['endpoint'] or 'the new instance'} "
                f"({record['database']['instance']}), then re-run the restore's integrity check")
        except (OpsError, TimeoutError) as exc:
            record["errors"].append(str(exc))
    record["integrity"] = integrity_problems(backup, record)
    record["ok"] = not record["errors"] and not record["integrity"]
    record["finished_at"] = time.time()
    ledger.put_artifact(ctx.env, ctx.release, "restore", record)
    return record


def integrity_problems(backup: dict[str, Any], restored: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for item in restored.get("dynamodb", []):
        want = next((d for d in backup.get("dynamodb", []) if d["table"] == item["table"]), None)
        if want is None or want.get("items") is None:
            continue
        if item.get("items") != want["items"]:
            problems.append(f"DynamoDB {item['table']}: {item.get('items')} items after restore, "
                            f"{want['items']} at backup {backup['id']}")
        elif item.get("checksum") != want.get("checksum"):
            problems.append(f"DynamoDB {item['table']}: same item count ({want['items']}) but the items differ")
    database = restored.get("database") or {}
    recorded = (backup.get("database") or {}).get("tables")
    now = database.get("tables")
    if recorded and now is not None:
        for table, want in sorted(recorded.items()):
            got = now.get(table)
            if got is None:
                problems.append(f"table {table} is missing after restore (it was in backup {backup['id']})")
            elif got["rows"] != want["rows"]:
                problems.append(f"table {table}: {got['rows']} rows after restore, {want['rows']} at backup")
            elif want.get("checksum") and got.get("checksum") != want["checksum"]:
                problems.append(f"table {table}: same row count ({want['rows']}) but the data differs (md5)")
    return problems


def _restore_table(client: Any, item: dict[str, Any], ctx: Any, timeout: float) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    table, arn = item["table"], item["backup_arn"]
    safety = None
    try:
        client.describe_table(TableName=table)
        exists = True
    except ClientError as exc:
        if dynamo.error_code(exc) != "ResourceNotFoundException":
            raise OpsError(f"DynamoDB describe_table {table!r} failed: {exc}") from None
        exists = False
    try:
        if exists:
            safety = client.create_backup(TableName=table, BackupName=f"pre-restore-{backup_id(ctx.env, ctx.release)}")[
                "BackupDetails"]["BackupArn"]
            client.delete_table(TableName=table)
            poll(lambda: _gone(client, table), timeout=timeout, what=f"deleting DynamoDB table {table}")
        client.restore_table_from_backup(TargetTableName=table, BackupArn=arn)
    except ClientError as exc:
        raise OpsError(f"DynamoDB restore of {table!r} from {arn} failed: {exc}") from None
    poll(lambda: _active(client, table), timeout=timeout, what=f"restoring DynamoDB table {table}")
    return {"table": table, "from_backup_arn": arn, "pre_restore_backup_arn": safety,
            **dynamo.table_summary(client, table)}


def _gone(client: Any, table: str) -> bool | None:
    from botocore.exceptions import ClientError

    try:
        client.describe_table(TableName=table)
    except ClientError as exc:
        if dynamo.error_code(exc) == "ResourceNotFoundException":
            return True
        raise
    return None


def _active(client: Any, table: str) -> bool | None:
    from botocore.exceptions import ClientError

    try:
        status = client.describe_table(TableName=table)["Table"]["TableStatus"]
    except ClientError as exc:
        if dynamo.error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    return True if status == "ACTIVE" else None


def _pg_restore(dsn: str, backup: dict[str, Any], timeout: float) -> dict[str, Any]:
    from pathlib import Path

    dump = Path(backup["pg_dump"]["path"])
    if not dump.is_file():
        raise OpsError(f"{dump}: the pg_dump of backup {backup['id']} is gone; pick another with --backup-id")
    conninfo, env = pg.client_env(dsn)
    # Connections of the running service would block DROP TABLE forever: give up instead.
    env["PGOPTIONS"] = "-c lock_timeout=30s"
    argv = [pg.pg_binary("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
            "--exit-on-error", f"--dbname={conninfo}", str(dump)]
    pg.run_tool(argv, env=env, timeout=timeout, dsn=dsn,
                failed=f"pg_restore of {dump} into {pg.safe_dsn(dsn)} failed, nothing changed (single transaction)")
    conn = pg.connect(dsn)
    try:
        fingerprint = pg.fingerprint(conn)
    finally:
        conn.close()
    extra = sorted(set(fingerprint["tables"]) - set((backup.get("database") or {}).get("tables", {})))
    return {"source": "pg_dump", "path": str(dump), "tables": fingerprint["tables"],
            "tables_not_in_backup": extra}


def _rds_restore(client: Any, rds: dict[str, Any], timeout: float) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    instance = f"{rds['instance']}-restored-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    try:
        client.restore_db_instance_from_db_snapshot(DBInstanceIdentifier=instance,
                                                    DBSnapshotIdentifier=rds["snapshot_id"])
    except ClientError as exc:
        raise OpsError(f"RDS restore from snapshot {rds['snapshot_id']} failed: {exc}") from None

    def available() -> dict[str, Any] | None:
        db = client.describe_db_instances(DBInstanceIdentifier=instance)["DBInstances"][0]
        return db if db["DBInstanceStatus"] == "available" else None

    db = poll(available, timeout=timeout, what=f"RDS instance {instance} from snapshot {rds['snapshot_id']}")
    endpoint = db.get("Endpoint") or {}
    return {"source": "rds_snapshot", "snapshot_id": rds["snapshot_id"], "instance": instance,
            "endpoint": f"{endpoint.get('Address', '')}:{endpoint.get('Port', '')}".strip(":"), "tables": None}
