"""The backup stage (``--rds``, ``--all``): RDS snapshot, DynamoDB on-demand backups, and in the sandbox a pg_dump.

Each backup is waited for until it is available (``backup.timeout``), and the
record written to the ledger (kind ``backup``) carries every id plus what the
data looked like at that moment (row counts and checksums per table, item
counts and checksums per DynamoDB table), which is what an emergency restore
checks itself against.

In the sandbox moto's RDS holds no data, so the RDS side also takes a real
``pg_dump --format=custom`` of the sandbox PostgreSQL into the sandbox state
folder. The fingerprint and the dump read the same exported snapshot, so the
recorded checksums are exactly what the dump contains even while the sandbox's
traffic writes.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import dynamo, pg
from .results import Ledger, OpsError, poll


def backup_id(env: str, release: str, now: float | None = None) -> str:
    """An id valid as an RDS snapshot id and a DynamoDB backup name: letters, digits, single hyphens."""
    stamp = datetime.fromtimestamp(now or time.time(), UTC).strftime("%Y%m%d%H%M%S")
    # Two backups in one second (a migrate right after a backup) must not collide.
    raw = f"llamadeploy-{env}-{release}-{stamp}-{uuid.uuid4().hex[:6]}"
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9]", "-", raw)).strip("-")[-200:]


def dumps_dir() -> Path:
    from ..sandbox.state import sandbox_dir

    return sandbox_dir() / "backups"


def run_backup(ctx: Any, ledger: Ledger, *, rds: bool, dynamodb: bool) -> dict[str, Any]:
    """Take the backups the runbook's ``backup.sh prod --rds|--all`` takes; return the ledger record."""
    policy = ctx.policy
    started = time.time()
    bid = backup_id(ctx.env, ctx.release, started)
    sandbox = policy.targets.source == "sandbox"
    record: dict[str, Any] = {
        "kind": "backup", "id": bid, "env": ctx.env, "release": ctx.release,
        "created_at": started, "created_at_iso": datetime.fromtimestamp(started, UTC).isoformat(),
        "sandbox": sandbox, "rds": None, "pg_dump": None, "database": None, "dynamodb": [], "errors": [],
    }
    if not rds and not dynamodb:
        raise OpsError("backup: nothing to back up; pass --rds (the database) or --all (database and DynamoDB)")
    timeout = policy.backup.timeout
    if rds:
        try:
            record["rds"] = _rds_snapshot(ctx.client("rds"), policy.backup.rds_instance, bid, timeout)
        except (OpsError, TimeoutError) as exc:
            record["errors"].append(str(exc))
        dsn = ctx.resolved_targets.postgres_dsn
        if sandbox:
            try:
                record["pg_dump"], record["database"] = _pg_dump(dsn, bid, timeout)
            except (OpsError, TimeoutError) as exc:
                record["errors"].append(str(exc))
        elif dsn:
            # On AWS the snapshot is the backup; row counts (no checksums: too costly on
            # production tables) are recorded for the restore's integrity check.
            try:
                conn = pg.connect(dsn)
                try:
                    record["database"] = {"tables": pg.fingerprint(conn, checksums=False)["tables"]}
                finally:
                    conn.close()
            except OpsError as exc:
                record["database"] = {"note": f"row counts not recorded: {exc}"}
    if dynamodb:
        client = ctx.client("dynamodb")
        for table in policy.backup.dynamodb_tables:
            try:
                record["dynamodb"].append(_dynamodb_backup(client, table, bid, timeout))
            except (OpsError, TimeoutError) as exc:
                record["errors"].append(str(exc))
    record["ok"] = not record["errors"]
    record["duration_s"] = round(time.time() - started, 3)
    ledger.put_artifact(ctx.env, ctx.release, "backup", record)
    return record


def _rds_snapshot(client: Any, instance: str, snapshot_id: str, timeout: float) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        client.create_db_snapshot(DBSnapshotIdentifier=snapshot_id, DBInstanceIdentifier=instance)
    except ClientError as exc:
        if dynamo.error_code(exc) == "DBInstanceNotFound":
            raise OpsError(f"RDS instance {instance!r} not found (policy key backup.rds_instance)") from None
        raise OpsError(f"RDS create_db_snapshot of {instance!r} failed: {exc}") from None

    def available() -> dict[str, Any] | None:
        snap = client.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)["DBSnapshots"][0]
        if snap["Status"] == "failed":
            raise OpsError(f"RDS snapshot {snapshot_id} of {instance!r} failed")
        return snap if snap["Status"] == "available" else None

    snap = poll(available, timeout=timeout, what=f"RDS snapshot {snapshot_id}")
    return {"instance": instance, "snapshot_id": snapshot_id, "arn": snap.get("DBSnapshotArn", ""),
            "status": snap["Status"]}


def _dynamodb_backup(client: Any, table: str, name: str, timeout: float) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        summary = dynamo.table_summary(client, table)
        arn = client.create_backup(TableName=table, BackupName=name)["BackupDetails"]["BackupArn"]
    except ClientError as exc:
        if dynamo.error_code(exc) in ("ResourceNotFoundException", "TableNotFoundException"):
            raise OpsError(f"DynamoDB table {table!r} not found (policy key backup.dynamodb_tables)") from None
        raise OpsError(f"DynamoDB backup of {table!r} failed: {exc}") from None

    def available() -> str | None:
        status = client.describe_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]["BackupStatus"]
        if status == "DELETED":
            raise OpsError(f"DynamoDB backup {arn} of {table!r} was deleted while being created")
        return status if status == "AVAILABLE" else None

    status = poll(available, timeout=timeout, what=f"DynamoDB backup of {table}")
    return {"table": table, "backup_arn": arn, "status": status, **summary}


def _pg_dump(dsn: str, bid: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dump and fingerprint the same snapshot of the database."""
    conninfo, env = pg.client_env(dsn)
    directory = dumps_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{bid}.dump"
    conn = pg.connect(dsn, autocommit=False)
    try:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        (snapshot,) = conn.execute("SELECT pg_export_snapshot()").fetchone()
        fingerprint = pg.fingerprint(conn)
        argv = [pg.pg_binary("pg_dump"), "--format=custom", f"--snapshot={snapshot}",
                f"--file={path}", f"--dbname={conninfo}"]
        pg.run_tool(argv, env=env, timeout=timeout, dsn=dsn, failed=f"pg_dump of {pg.safe_dsn(dsn)} failed")
    finally:
        conn.rollback()
        conn.close()
    return {"path": str(path), "bytes": path.stat().st_size, "format": "custom"}, fingerprint
