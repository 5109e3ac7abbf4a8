"""The migrate stage: backup, apply ``sql/migrations`` with yoyo, verify, health, roll back on failure.

yoyo-migrations does the parsing (``NNNN.sql`` + ``NNNN.rollback.sql``, split
with sqlparse), runs each migration in its own transaction and keeps its
applied-migrations table. yoyo's "hash" is a hash of the migration *id*, not of
its content, so this module keeps ``llamadeploy_migrations`` with a sha256 of
each applied file: a file changed after it was applied is refused before
anything runs.

On any failure (a migration's SQL, the expected tables/columns, the health
query) the migrations this run applied are rolled back with their rollback
files, newest first, and the schema and data are compared with a fingerprint
taken before the run (columns, indexes, row counts and md5 per table).

Baseline migrations. A migration whose first lines carry the comment
``-- llamadeploy: baseline`` describes a schema that existed before migrations
were managed (production's tables, and the sandbox's, which the service
creates). On a database that already has that schema it is *adopted*: marked
applied with its checksum, never run, and never rolled back (its rollback file
would drop production tables). "Already has it" is proven, not guessed: the
baseline's SQL runs inside a transaction in a scratch schema, its tables'
columns (name, type, nullability) are compared with ``public``'s, and the
transaction is rolled back. All tables present and equal: adopted. None
present: it runs like any migration (a fresh database). Anything in between:
refused, naming the differences. This is Flyway's baseline-on-migrate, with
the check Flyway leaves to the operator.

Timeouts. Every connection of a migrate stage carries ``lock_timeout`` and
``statement_timeout`` (policy ``database.lock_timeout``, default 10 s, and
``database.statement_timeout``, default 15 min) as libpq ``options``: an
``ALTER TABLE`` waiting behind a long transaction would otherwise queue every
reader of that table behind itself (an outage while "nothing happens"); with a
lock timeout it fails and is rolled back, and the stage says so.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..redact import redact
from . import pg
from .results import Ledger, OpsError

CHECKSUM_TABLE = "llamadeploy_migrations"
#: ``-- llamadeploy: baseline`` among a migration's leading comment lines.
BASELINE_MARK = re.compile(r"^--\s*llamadeploy:\s*baseline\b", re.IGNORECASE)
_PROBE_SCHEMA = "llamadeploy_baseline_probe"
BASELINE_RELEASE = "(baseline: existing schema adopted)"
_CREATE_CHECKSUMS = f"""
CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (
    migration_id text PRIMARY KEY,
    sha256 text NOT NULL,
    rollback_sha256 text,
    release text,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class MigrationFile:
    id: str
    path: Path
    rollback_path: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def is_baseline(self) -> bool:
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            if not line.lstrip().startswith("--"):
                return False
            if BASELINE_MARK.match(line.strip()):
                return True
        return False

    @property
    def rollback_sha256(self) -> str | None:
        if not self.rollback_path.is_file():
            return None
        return hashlib.sha256(self.rollback_path.read_bytes()).hexdigest()


def migrations_dir(policy: Any, base: Path | None = None) -> Path:
    """The policy's ``database.migrations_dir``, relative to the working directory (the repo root)."""
    path = Path(policy.database.migrations_dir)
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return path


def discover(directory: Path) -> list[MigrationFile]:
    """Migration files in apply order (by name, as yoyo orders them)."""
    if not directory.is_dir():
        raise OpsError(f"{directory}: migrations folder not found (policy key database.migrations_dir)")
    files = []
    for path in sorted(directory.glob("*.sql")):
        if path.name.endswith(".rollback.sql"):
            continue
        files.append(MigrationFile(path.stem, path, path.with_name(f"{path.stem}.rollback.sql")))
    return files


def problems(files: list[MigrationFile]) -> list[str]:
    """What makes migrations not "prepared": a missing or empty rollback file, SQL that does not parse."""
    import sqlparse

    found: list[str] = []
    names = {f.path.name for f in files} | {f.rollback_path.name for f in files}
    if files:
        for orphan in sorted(files[0].path.parent.glob("*.rollback.sql")):
            if orphan.name not in names:
                found.append(f"{orphan}: rollback file without a migration {orphan.name.replace('.rollback', '')}")
    for f in files:
        if not f.rollback_path.is_file():
            found.append(f"{f.path}: no rollback file; write {f.rollback_path.name} that undoes it")
            continue
        for path in (f.path, f.rollback_path):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                found.append(f"{path}: cannot be read: {exc}")
                continue
            statements = [s for s in sqlparse.split(text) if _has_code(s)]
            if not statements:
                found.append(f"{path}: no SQL statement in the file")
            for s in statements:
                parsed = sqlparse.parse(s)[0]
                if parsed.get_type() == "UNKNOWN":
                    found.append(f"{path}: statement not recognised as SQL: {s.strip()[:60]!r}")
    return found


def _has_code(statement: str) -> bool:
    import sqlparse

    return bool(sqlparse.format(statement, strip_comments=True).strip().strip(";").strip())


def with_timeouts(dsn: str, policy: Any) -> str:
    """``dsn`` with the policy's lock and statement timeouts set for the whole session (libpq ``options``)."""
    from psycopg.conninfo import make_conninfo

    parts = pg.conninfo(dsn)
    # 0 would mean "no timeout" to PostgreSQL: a policy value rounds up to at least 1 ms instead.
    lock_ms = max(1, round(float(policy.database.lock_timeout) * 1000))
    statement_ms = max(1, round(float(policy.database.statement_timeout) * 1000))
    options = f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}"
    parts["options"] = f"{parts['options']} {options}" if parts.get("options") else options
    return make_conninfo(**parts)


def _backend(dsn: str) -> Any:
    from yoyo import get_backend

    try:
        return get_backend(pg.yoyo_uri(dsn))
    except Exception as exc:
        raise OpsError(f"cannot connect to PostgreSQL ({pg.safe_dsn(dsn)}) for migrations: "
                       f"{redact(str(exc).strip(), [dsn])}") from None


def _read(directory: Path) -> Any:
    from yoyo import read_migrations

    return read_migrations(str(directory))


def applied_ids(dsn: str) -> set[str] | None:
    """Ids of migrations yoyo has applied, or None when it never ran on this database."""
    conn = pg.connect(dsn)
    try:
        exists = conn.execute("SELECT to_regclass('public._yoyo_migration')").fetchone()[0]
        if not exists:
            return set()
        return {r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration").fetchall()}
    finally:
        conn.close()


def pending(files: list[MigrationFile], dsn: str) -> list[MigrationFile]:
    done = applied_ids(dsn) or set()
    return [f for f in files if f.id not in done]


def changed_files(conn: Any, files: list[MigrationFile], applied: set[str]) -> tuple[list[str], list[str]]:
    """(refusals for applied files whose content changed, ids applied before llamadeploy recorded checksums)."""
    recorded = {r[0]: r[1] for r in conn.execute(f"SELECT migration_id, sha256 FROM {CHECKSUM_TABLE}").fetchall()}
    refused, adopted = [], []
    for f in files:
        if f.id not in applied:
            continue
        if f.id not in recorded:
            adopted.append(f.id)
        elif recorded[f.id] != f.sha256:
            refused.append(
                f"{f.path}: changed after it was applied (sha256 {f.sha256[:12]}, applied {recorded[f.id][:12]}); "
                "never edit an applied migration: restore the file and add a new migration"
            )
    return refused, adopted


def verify(conn: Any, expected: list[str]) -> list[str]:
    """The runbook's ``\\dt`` step: every ``table`` and ``table.column`` in database.expected_tables exists."""
    cols = pg.columns(conn)
    found = []
    for item in expected:
        table, _, column = item.partition(".")
        if table not in cols:
            found.append(f"table {table} is missing (policy key database.expected_tables)")
        elif column and column not in cols[table]:
            found.append(f"column {table}.{column} is missing (policy key database.expected_tables)")
    return found


def health(conn: Any, expected: list[str]) -> list[str]:
    """``SELECT 1`` and a read of each expected table, as the application would."""
    from psycopg import sql

    found = []
    try:
        conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        return [f"SELECT 1 failed: {exc}"]
    for table in sorted({e.partition(".")[0] for e in expected}):
        try:
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(table))).fetchall()
        except Exception as exc:
            found.append(f"reading {table} failed: {str(exc).strip()}")
    return found


def _table_shapes(conn: Any, schema: str) -> dict[str, list[tuple[str, str, str]]]:
    rows = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s ORDER BY table_name, ordinal_position", (schema,)
    ).fetchall()
    out: dict[str, list[tuple[str, str, str]]] = {}
    for table, column, data_type, nullable in rows:
        out.setdefault(table, []).append((column, data_type, nullable))
    return out


def baseline_status(dsn: str, f: MigrationFile) -> tuple[str, list[str]]:
    """Whether ``public`` already has the schema baseline ``f`` creates: ("present" | "absent" | "partial", problems).

    The baseline's SQL runs in a scratch schema inside a transaction that is
    always rolled back (PostgreSQL's DDL is transactional), so nothing is left behind.
    """
    conn = pg.connect(dsn, autocommit=False)
    try:
        conn.execute(f"CREATE SCHEMA {_PROBE_SCHEMA}")
        conn.execute(f"SET LOCAL search_path TO {_PROBE_SCHEMA}")
        try:
            conn.execute(f.path.read_text(encoding="utf-8"))
        except Exception as exc:
            raise OpsError(f"{f.path}: the baseline does not run on an empty schema: "
                           f"{redact(str(exc).strip(), [dsn])}") from None
        wanted = _table_shapes(conn, _PROBE_SCHEMA)
        existing = _table_shapes(conn, "public")
    finally:
        conn.rollback()
        conn.close()
    if not wanted:
        raise OpsError(f"{f.path}: marked as a baseline but creates no table")
    present = [t for t in wanted if t in existing]
    if not present:
        return "absent", []
    problems = []
    for table, columns in sorted(wanted.items()):
        if table not in existing:
            problems.append(f"table {table} is missing")
        elif existing[table] != columns:
            have = ", ".join(f"{c} {t}{'' if n == 'YES' else ' not null'}" for c, t, n in existing[table])
            want = ", ".join(f"{c} {t}{'' if n == 'YES' else ' not null'}" for c, t, n in columns)
            problems.append(f"table {table} has ({have}), the baseline says ({want})")
    return ("present", []) if not problems else ("partial", problems)


def run_migrations(ctx: Any, ledger: Ledger, *, directory: Path | None = None) -> dict[str, Any]:
    """Back up, apply pending migrations, verify and check health; roll back on any failure.

    Returns the record also written to the ledger (kind ``migration``):
    ``status`` is ``applied``, ``noop`` (nothing pending), ``refused`` (a changed
    applied file; nothing ran), ``rolled_back`` (failed, schema and data proven
    unchanged) or ``rollback_failed`` (failed and the database differs from
    before: ``differences`` says how). ``ok`` is true only for applied/noop.
    """
    policy = ctx.policy
    dsn = with_timeouts(pg.require_dsn(ctx.resolved_targets.postgres_dsn), policy)
    directory = directory or migrations_dir(policy)
    files = discover(directory)
    started = time.time()
    record: dict[str, Any] = {
        "kind": "migration", "env": ctx.env, "release": ctx.release, "started_at": started,
        "directory": str(directory), "applied": [], "rolled_back": [], "errors": [],
        "expected_tables": list(policy.database.expected_tables),
        "timeouts": {"lock_timeout": policy.database.lock_timeout, "statement_timeout": policy.database.statement_timeout},
    }
    bad = problems(files)
    if bad:
        return _finish(ctx, ledger, record, "refused", errors=bad)

    from yoyo.exceptions import LockTimeout

    conn = pg.connect(dsn)
    backend = _backend(dsn)
    try:
        return _locked_run(ctx, ledger, record, conn, backend, files, directory, dsn)
    except LockTimeout as exc:
        return _finish(ctx, ledger, record, "refused",
                       errors=[f"another migration holds the database lock: {exc}; wait for it, "
                               "or if its process is gone, remove the row from yoyo_lock"])
    finally:
        conn.close()
        backend.connection.close()


def _locked_run(ctx: Any, ledger: Ledger, record: dict[str, Any], conn: Any, backend: Any,
                files: list[MigrationFile], directory: Path, dsn: str) -> dict[str, Any]:
    from .backup import run_backup

    policy = ctx.policy
    # yoyo's lock table stops two migrate stages (two CI jobs) from interleaving.
    with backend.lock():
        conn.execute(_CREATE_CHECKSUMS)
        migrations = _read(directory)
        applied = set(backend.get_applied_migration_hashes())
        applied_ids_ = {m.id for m in migrations if m.hash in applied}
        refused, adopted = changed_files(conn, files, applied_ids_)
        if refused:
            return _finish(ctx, ledger, record, "refused", errors=refused)
        by_id = {f.id: f for f in files}
        for mid in adopted:
            _record_checksum(conn, by_id[mid], release="(applied before llamadeploy)")
        record["adopted"] = adopted
        record["baselined"] = []
        for migration in backend.to_apply(migrations):
            f = by_id[migration.id]
            if not f.is_baseline:
                continue
            try:
                status, differences = baseline_status(dsn, f)
            except OpsError as exc:
                return _finish(ctx, ledger, record, "refused", errors=[str(exc)])
            if status == "partial":
                return _finish(ctx, ledger, record, "refused", errors=[
                    f"{f.path} is a baseline (-- llamadeploy: baseline) and the database has only part of it: "
                    + "; ".join(differences) + ". Bring the schema to the baseline by hand, or drop what is "
                    "there on a database without data, then migrate again"])
            if status == "present":
                # Bookkeeping only: the schema is already there, so nothing runs and nothing will roll it back.
                backend.mark_one(migration)
                _record_checksum(conn, f, release=BASELINE_RELEASE)
                record["baselined"].append(migration.id)
        todo = backend.to_apply(migrations)
        if not todo:
            record["verify_errors"] = verify(conn, policy.database.expected_tables)
            record["health_errors"] = health(conn, policy.database.expected_tables)
            found = record["verify_errors"] + record["health_errors"]
            return _finish(ctx, ledger, record, "noop" if not found else "unhealthy", errors=found)

        # The runbook's "1. Create backup": no backup, no migration.
        try:
            backup = run_backup(ctx, ledger, rds=True, dynamodb=False)
        except (OpsError, TimeoutError) as exc:
            return _finish(ctx, ledger, record, "refused", errors=[f"backup before migrating failed: {exc}"])
        record["backup"] = _backup_summary(backup)
        if not backup.get("ok"):
            return _finish(ctx, ledger, record, "refused",
                           errors=[f"backup before migrating failed: {e}" for e in backup.get("errors", [])])
        before = pg.fingerprint(conn)
        done: list[Any] = []
        errors: list[str] = []
        for migration in todo:
            try:
                backend.apply_one(migration)
            except Exception as exc:
                errors.append(f"{migration.id}: {redact(str(exc).strip(), [dsn])}")
                break
            done.append(migration)
            _record_checksum(conn, by_id[migration.id], release=ctx.release)
            record["applied"].append(migration.id)
        if not errors:
            record["verify_errors"] = verify(conn, policy.database.expected_tables)
            record["health_errors"] = health(conn, policy.database.expected_tables)
            errors = record["verify_errors"] + record["health_errors"]
        if not errors:
            return _finish(ctx, ledger, record, "applied")

        rollback_errors = []
        for migration in reversed(done):
            try:
                backend.rollback_one(migration)
                conn.execute(f"DELETE FROM {CHECKSUM_TABLE} WHERE migration_id = %s", (migration.id,))
                record["rolled_back"].append(migration.id)
            except Exception as exc:
                rollback_errors.append(f"rollback of {migration.id} failed: {redact(str(exc).strip(), [dsn])}")
                break
        after = pg.fingerprint(conn)
        differences = pg.diff_fingerprints(before, after)
        record["differences"] = differences
        status = "rolled_back" if not differences and not rollback_errors else "rollback_failed"
        return _finish(ctx, ledger, record, status, errors=errors + rollback_errors)


def _record_checksum(conn: Any, f: MigrationFile, *, release: str) -> None:
    conn.execute(
        f"INSERT INTO {CHECKSUM_TABLE} (migration_id, sha256, rollback_sha256, release) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (migration_id) DO UPDATE SET sha256 = EXCLUDED.sha256, "
        "rollback_sha256 = EXCLUDED.rollback_sha256, release = EXCLUDED.release, applied_at = now()",
        (f.id, f.sha256, f.rollback_sha256, release),
    )


def _backup_summary(backup: dict[str, Any]) -> dict[str, Any]:
    return {"id": backup.get("id"), "ok": backup.get("ok"), "errors": backup.get("errors", [])}


def _finish(ctx: Any, ledger: Ledger, record: dict[str, Any], status: str,
            errors: list[str] | None = None) -> dict[str, Any]:
    record["status"] = status
    record["ok"] = status in ("applied", "noop")
    record["errors"] = list(errors or [])
    record["finished_at"] = time.time()
    ledger.put_artifact(ctx.env, ctx.release, "migration", record)
    return record
