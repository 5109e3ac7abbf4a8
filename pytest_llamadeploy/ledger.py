"""The ledger: where stage results and the environment lock live.

Separate CI jobs, possibly on separate machines, gate on each other through it:
``shift50`` runs only if the ledger says ``shift10`` passed for the same
release. Two backends: a DynamoDB table (conditional writes; the default on
AWS and in the sandbox) and a local JSON file (single machine).

A run writes ``started`` before it changes anything and the final status after,
so a run killed in between leaves a ``started`` record that the next run sees
and must resolve. The lock is one item per env with an owner, a lease and a
renewal counter (``lease.py`` says when it may be taken over). Record writes
made by a run are *fenced*: ``put(record, fence=run_id)`` succeeds only while
the lock names that run (DynamoDB: one transaction with a ConditionCheck on the
lock item; file: the same check under the file lock), so a run that lost its
lock can never overwrite what the new holder wrote.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .lease import holder_gone, observe_lapse, owner_identity

STATUSES = ("started", "passed", "failed", "rolled_back", "rollback_failed", "aborted", "paused")
#: ``paused``: the run ended awaiting a human's decision (``llamadeploy decide``; judgement.py).
FINAL = ("passed", "failed", "rolled_back", "rollback_failed", "aborted", "paused")


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def this_owner() -> str:
    return f"{os.environ.get('USER') or os.environ.get('LOGNAME') or 'ci'}@{socket.gethostname()}:{os.getpid()}"


@dataclass
class StageRecord:
    env: str
    release: str
    stage: str
    status: str
    run_id: str
    owner: str
    started_at: float
    ended_at: float | None = None
    approver: str | None = None
    policy_hash: str = ""
    #: Alias state per function before and after: {"onchain-api": {"version": "3", "weights": {"4": 0.1}}}
    weights_before: dict[str, Any] = field(default_factory=dict)
    weights_after: dict[str, Any] = field(default_factory=dict)
    old_versions: dict[str, str] = field(default_factory=dict)
    new_versions: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    #: Free-form evidence: failed tests, the breach, the rollback record, the emergency reason.
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at_iso"] = iso(self.started_at)
        data["ended_at_iso"] = iso(self.ended_at)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LockInfo:
    env: str
    owner: str
    run_id: str
    acquired_at: float
    expires_at: float
    stage: str = ""
    release: str = ""
    #: The lease in seconds and the holder's renewal count: a taker watches these, not clocks.
    lease: float = 0.0
    counter: int = 0
    #: host, boot id, PID namespace, PID and its start time (lease.owner_identity).
    identity: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LockInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        return (
            f"held by {self.owner} (run {self.run_id}, {self.stage or '?'} of {self.release or '?'}) "
            f"since {iso(self.acquired_at)}, lease until {iso(self.expires_at)}"
        )

    def holder_gone(self) -> str | None:
        """Why the holder provably stopped (its process on this machine is gone): take over at once."""
        return holder_gone(self.identity)

    def expired_by_wall_clock(self, at: float) -> str | None:
        if self.expires_at <= at:
            return f"its lease expired at {iso(self.expires_at)} by the holder's clock"
        return None

    def stale_reason(self, at: float) -> str | None:
        """Why this lock may be taken over (a wall-clock expiry still to be confirmed), or None."""
        gone = self.holder_gone()
        if gone:
            return gone
        expired = self.expired_by_wall_clock(at)
        if expired and self.lease > 0:
            expired += f"; a new run confirms it by watching the lock for {self.lease:g}s on its own clock"
        return expired


class LockHeld(Exception):
    def __init__(self, lock: LockInfo):
        self.lock = lock
        super().__init__(f"env {lock.env!r} is locked: {lock.describe()}")


class LedgerConflict(Exception):
    """A conditional write lost: someone else changed the record or the lock."""


class LeaseLost(LedgerConflict):
    """A fenced write or a renewal found the lock no longer held by this run."""

    def __init__(self, env: str, run_id: str, holder: LockInfo | None):
        self.holder = holder
        who = holder.describe() if holder is not None else "nobody holds it"
        super().__init__(f"run {run_id} no longer holds the lock of {env!r}: {who}")


class LedgerCorrupt(Exception):
    """The ledger cannot be read; ``recovery`` is the command that repairs it."""

    def __init__(self, where: str, detail: str, recovery: str):
        self.where, self.detail, self.recovery = where, detail, recovery
        super().__init__(f"the ledger {where} is unreadable ({detail}); nothing was changed. To recover: {recovery}")


class Ledger(Protocol):
    def get(self, env: str, release: str, stage: str) -> StageRecord | None: ...
    def put(self, record: StageRecord, *, fence: str | None = None) -> None: ...
    def records(self, env: str) -> list[StageRecord]: ...
    def acquire_lock(self, env: str, run_id: str, lease: float, *, stage: str = "", release: str = "",
                     observe: Callable[[LockInfo], str | None] | None = None) -> LockInfo | None: ...
    def renew_lock(self, env: str, run_id: str, lease: float) -> None: ...
    def release_lock(self, env: str, run_id: str) -> None: ...
    def current_lock(self, env: str) -> LockInfo | None: ...
    def put_artifact(self, env: str, release: str, kind: str, data: dict[str, Any]) -> None: ...
    def get_artifacts(self, env: str, kind: str) -> list[dict[str, Any]]: ...
    def describe(self) -> str: ...


def _overwrite_refused(record: StageRecord, theirs: StageRecord | None) -> str:
    held = f"run {theirs.run_id} ({theirs.status})" if theirs is not None else "another run"
    return (f"not written: {record.stage} of {record.release or '(no release)'} in {record.env} is {held}'s record, "
            f"and run {record.run_id} does not hold the lock of {record.env}; only the lock's holder may overwrite it")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _new_lock(env: str, run_id: str, lease: float, stage: str, release: str) -> LockInfo:
    at = now()
    return LockInfo(env, this_owner(), run_id, at, at + lease, stage, release, float(lease), 0, owner_identity())


def takeover_reason(previous: LockInfo, read: Callable[[], LockInfo | None],
                    observe: Callable[[LockInfo], str | None] | None) -> str | None:
    """Why ``previous`` (another run's lock) may be replaced now, or None (raise LockHeld)."""
    gone = previous.holder_gone()
    if gone:
        return gone
    if previous.expired_by_wall_clock(now()) is None:
        return None
    if observe is None:
        return observe_lapse(read, previous)
    return observe(previous)


def _replaceable(run_id: str, read: Callable[[], LockInfo | None],
                 observe: Callable[[LockInfo], str | None] | None) -> LockInfo | None:
    """The lock ``run_id`` may write over: None (free, or its own) or another run's stale lock; else LockHeld.

    Runs outside any file lock or transaction: watching a lapse takes a whole lease.
    """
    previous = read()
    if previous is None or previous.run_id == run_id:
        return None
    if takeover_reason(previous, read, observe) is None:
        holder = read()
        if holder is not None:
            raise LockHeld(holder)
        return None  # released meanwhile: free
    return previous


# --------------------------------------------------------------------------- file


class FileLedger:
    """One JSON file per env, updated under a file lock.

    Each write goes to a temporary file that is fsynced, the current file is kept
    as ``<env>.json.prev`` (a hard link: the previous copy costs nothing), the
    temporary file is renamed over the current one and the folder is fsynced, so
    a crash or a power cut leaves either the old or the new file, never half of
    one. A file that does not parse is refused with the command that recovers it.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    def describe(self) -> str:
        return f"file {self.directory}"

    def _path(self, env: str) -> Path:
        return self.directory / f"{env}.json"

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("records", {}), dict):
            raise ValueError("the top level is not a ledger document (no 'records' mapping)")
        doc.setdefault("records", {})
        doc.setdefault("lock", None)
        doc.setdefault("artifacts", [])
        return doc

    def _recovery(self, env: str, path: Path) -> str:
        prev = path.with_name(path.name + ".prev")
        try:
            self._parse(prev.read_text())
        except (OSError, ValueError):
            return (f"no readable previous copy; move the file aside with `mv {path} {path}.corrupt` (its history "
                    f"and lock are then gone), check what serves with `llamadeploy status --env {env}`, and roll "
                    f"back or re-run the stage from there")
        return (f"restore the previous copy kept beside it (it lacks only the last write): `cp {prev} {path}`, "
                f"then check with `llamadeploy status --env {env}`")

    def _read(self, env: str) -> dict[str, Any]:
        path = self._path(env)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"records": {}, "lock": None, "artifacts": []}
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerCorrupt(f"file {path}", str(exc), self._recovery(env, path)) from None
        try:
            return self._parse(text)
        except ValueError as exc:
            raise LedgerCorrupt(f"file {path}", f"{type(exc).__name__}: {exc}", self._recovery(env, path)) from None

    def _write(self, env: str, doc: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(env)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            prev = path.with_name(path.name + ".prev")
            keep = path.with_name(f".{path.name}.prev.{os.getpid()}")
            try:
                os.link(path, keep)
            except OSError:  # a file system without hard links: copy instead
                import shutil

                shutil.copy2(path, keep)
            os.replace(keep, prev)
        os.replace(tmp, path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the renames themselves survive a power cut
        finally:
            os.close(fd)

    def _mutex(self, env: str):  # noqa: ANN202 - filelock's type
        from filelock import FileLock

        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / f".{env}.lock"), timeout=30)

    def get(self, env: str, release: str, stage: str) -> StageRecord | None:
        data = self._read(env)["records"].get(f"{release}/{stage}")
        return StageRecord.from_json(data) if data else None

    def put(self, record: StageRecord, *, fence: str | None = None) -> None:
        with self._mutex(record.env):
            doc = self._read(record.env)
            key = f"{record.release}/{record.stage}"
            if fence is not None:
                lock = doc.get("lock")
                if not lock or lock.get("run_id") != fence:
                    raise LeaseLost(record.env, fence, LockInfo.from_json(lock) if lock else None)
            elif key in doc["records"] and doc["records"][key].get("run_id") != record.run_id:
                raise LedgerConflict(_overwrite_refused(record, StageRecord.from_json(doc["records"][key])))
            doc["records"][key] = record.to_json()
            self._write(record.env, doc)

    def records(self, env: str) -> list[StageRecord]:
        recs = [StageRecord.from_json(d) for d in self._read(env)["records"].values()]
        return sorted(recs, key=lambda r: r.started_at)

    def acquire_lock(self, env: str, run_id: str, lease: float, *, stage: str = "", release: str = "",
                     observe: Callable[[LockInfo], str | None] | None = None) -> LockInfo | None:
        """Take the lock; return the stale lock that was taken over (None if it was free); raise LockHeld."""
        previous = _replaceable(run_id, lambda: self.current_lock(env), observe)
        with self._mutex(env):
            doc = self._read(env)
            current = LockInfo.from_json(doc["lock"]) if doc.get("lock") else None
            if current is not None and current.run_id != run_id and (
                    previous is None or (current.run_id, current.counter) != (previous.run_id, previous.counter)):
                raise LockHeld(current)
            doc["lock"] = asdict(_new_lock(env, run_id, lease, stage, release))
            self._write(env, doc)
        return previous

    def renew_lock(self, env: str, run_id: str, lease: float) -> None:
        with self._mutex(env):
            doc = self._read(env)
            lock = doc.get("lock")
            if not lock or lock["run_id"] != run_id:
                raise LeaseLost(env, run_id, LockInfo.from_json(lock) if lock else None)
            lock["expires_at"] = now() + lease
            lock["lease"] = float(lease)
            lock["counter"] = int(lock.get("counter") or 0) + 1
            self._write(env, doc)

    def release_lock(self, env: str, run_id: str) -> None:
        with self._mutex(env):
            doc = self._read(env)
            if doc.get("lock") and doc["lock"]["run_id"] == run_id:
                doc["lock"] = None
                self._write(env, doc)

    def current_lock(self, env: str) -> LockInfo | None:
        lock = self._read(env).get("lock")
        return LockInfo.from_json(lock) if lock else None

    def put_artifact(self, env: str, release: str, kind: str, data: dict[str, Any]) -> None:
        with self._mutex(env):
            doc = self._read(env)
            doc.setdefault("artifacts", []).append({"kind": kind, "release": release, "recorded_at": now(), "data": data})
            self._write(env, doc)

    def get_artifacts(self, env: str, kind: str) -> list[dict[str, Any]]:
        items = [a for a in self._read(env).get("artifacts", []) if a["kind"] == kind]
        items.sort(key=lambda a: a["recorded_at"], reverse=True)
        return [{**a["data"], "release": a["release"], "recorded_at": a["recorded_at"]} for a in items]


# ----------------------------------------------------------------------- dynamodb


class DynamoLedger:
    """One DynamoDB table: ``pk = env#<env>``; ``sk = rec#<release>#<stage>``, ``lock``, ``art#<kind>#<time>#<id>``.

    The lock and the records are written with conditions, so two machines can
    never both believe they hold an env, and a run's record writes go through
    only while the lock item still names that run.
    """

    def __init__(self, client: Any, table: str):
        self.client = client
        self.table = table
        self._ready = False

    def describe(self) -> str:
        return f"dynamodb table {self.table}"

    def ensure_table(self) -> None:
        if self._ready:
            return
        try:
            self.client.describe_table(TableName=self.table)
        except self.client.exceptions.ResourceNotFoundException:
            try:
                self.client.create_table(
                    TableName=self.table,
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                    AttributeDefinitions=[
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            except self.client.exceptions.ResourceInUseException:
                pass  # created concurrently by another run
            self.client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        self._ready = True

    @staticmethod
    def _pk(env: str) -> dict[str, str]:
        return {"S": f"env#{env}"}

    def _table_exists(self) -> bool:
        """Reads never create the table, so ``--plan`` and ``status`` write nothing."""
        if self._ready:
            return True
        try:
            self.client.describe_table(TableName=self.table)
        except self.client.exceptions.ResourceNotFoundException:
            return False
        self._ready = True
        return True

    def _doc(self, item: dict[str, Any]) -> dict[str, Any]:
        try:
            doc = json.loads(item["doc"]["S"])
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            return doc
        except (KeyError, TypeError, ValueError) as exc:
            pk, sk = item.get("pk", {}).get("S"), item.get("sk", {}).get("S")
            raise LedgerCorrupt(
                f"item pk={pk} sk={sk} of table {self.table}", f"{type(exc).__name__}: {exc}",
                f"inspect it with `aws dynamodb get-item --table-name {self.table} --key "
                f"'{{\"pk\":{{\"S\":\"{pk}\"}},\"sk\":{{\"S\":\"{sk}\"}}}}'` and fix or delete it") from None

    def _get_item(self, env: str, sk: str) -> dict[str, Any] | None:
        if not self._table_exists():
            return None
        item = self.client.get_item(TableName=self.table, Key={"pk": self._pk(env), "sk": {"S": sk}}, ConsistentRead=True).get("Item")
        return self._doc(item) if item else None

    def get(self, env: str, release: str, stage: str) -> StageRecord | None:
        data = self._get_item(env, f"rec#{release}#{stage}")
        return StageRecord.from_json(data) if data else None

    def put(self, record: StageRecord, *, fence: str | None = None) -> None:
        self.ensure_table()
        item = {
            "pk": self._pk(record.env),
            "sk": {"S": f"rec#{record.release}#{record.stage}"},
            "status": {"S": record.status},
            "run_id": {"S": record.run_id},
            "doc": {"S": json.dumps(record.to_json(), sort_keys=True)},
        }
        if fence is None:
            # Conditional as well: a write without the lock may create a record or update its own run's,
            # never overwrite another run's (two writers racing on one stage: the second is told).
            try:
                self.client.put_item(TableName=self.table, Item=item,
                                     ConditionExpression="attribute_not_exists(sk) OR run_id = :run",
                                     ExpressionAttributeValues={":run": {"S": record.run_id}})
            except self.client.exceptions.ConditionalCheckFailedException:
                theirs = self.get(record.env, record.release, record.stage)
                raise LedgerConflict(_overwrite_refused(record, theirs)) from None
            return
        try:
            self.client.transact_write_items(TransactItems=[
                {"ConditionCheck": {"TableName": self.table, "Key": {"pk": self._pk(record.env), "sk": {"S": "lock"}},
                                    "ConditionExpression": "run_id = :run",
                                    "ExpressionAttributeValues": {":run": {"S": fence}}}},
                {"Put": {"TableName": self.table, "Item": item}},
            ])
        except self.client.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                raise LeaseLost(record.env, fence, self.current_lock(record.env)) from None
            raise

    def _query(self, env: str, prefix: str) -> list[dict[str, Any]]:
        if not self._table_exists():
            return []
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": self._pk(env), ":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            items.extend(self._doc(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def records(self, env: str) -> list[StageRecord]:
        recs = [StageRecord.from_json(d) for d in self._query(env, "rec#")]
        return sorted(recs, key=lambda r: r.started_at)

    def _lock_item(self, info: LockInfo) -> dict[str, Any]:
        return {"pk": self._pk(info.env), "sk": {"S": "lock"}, "run_id": {"S": info.run_id},
                "expires_at": {"N": repr(info.expires_at)}, "counter": {"N": str(info.counter)},
                "doc": {"S": json.dumps(asdict(info))}}

    def acquire_lock(self, env: str, run_id: str, lease: float, *, stage: str = "", release: str = "",
                     observe: Callable[[LockInfo], str | None] | None = None) -> LockInfo | None:
        self.ensure_table()
        previous = _replaceable(run_id, lambda: self.current_lock(env), observe)
        info = _new_lock(env, run_id, lease, stage, release)
        values: dict[str, Any]
        if previous is None:
            condition = "attribute_not_exists(pk) OR run_id = :run"
            values = {":run": {"S": run_id}}
            names = None
        else:
            # Take over exactly the stale lock we watched (its run id and renewal count), nobody else's.
            condition = "run_id = :prev AND (attribute_not_exists(#c) OR #c = :c)"
            values = {":prev": {"S": previous.run_id}, ":c": {"N": str(previous.counter)}}
            names = {"#c": "counter"}
        try:
            self.client.put_item(TableName=self.table, Item=self._lock_item(info), ConditionExpression=condition,
                                 ExpressionAttributeValues=values, **({"ExpressionAttributeNames": names} if names else {}))
        except self.client.exceptions.ConditionalCheckFailedException:
            holder = self.current_lock(env)
            if holder is None:
                raise LedgerConflict(f"env {env!r}: the lock changed while taking it; run again") from None
            raise LockHeld(holder) from None
        return previous

    def renew_lock(self, env: str, run_id: str, lease: float) -> None:
        self.ensure_table()
        current = self.current_lock(env)
        if current is None or current.run_id != run_id:
            raise LeaseLost(env, run_id, current)
        current.expires_at = now() + lease
        current.lease = float(lease)
        current.counter += 1
        try:
            self.client.put_item(TableName=self.table, Item=self._lock_item(current),
                                 ConditionExpression="run_id = :run", ExpressionAttributeValues={":run": {"S": run_id}})
        except self.client.exceptions.ConditionalCheckFailedException:
            raise LeaseLost(env, run_id, self.current_lock(env)) from None

    def release_lock(self, env: str, run_id: str) -> None:
        self.ensure_table()
        try:
            self.client.delete_item(
                TableName=self.table, Key={"pk": self._pk(env), "sk": {"S": "lock"}},
                ConditionExpression="run_id = :run", ExpressionAttributeValues={":run": {"S": run_id}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            pass  # not ours any more (taken over after expiry): nothing to release

    def current_lock(self, env: str) -> LockInfo | None:
        data = self._get_item(env, "lock")
        return LockInfo.from_json(data) if data else None

    def put_artifact(self, env: str, release: str, kind: str, data: dict[str, Any]) -> None:
        self.ensure_table()
        at = now()
        doc = {**data, "release": release, "recorded_at": at}
        self.client.put_item(
            TableName=self.table,
            Item={"pk": self._pk(env), "sk": {"S": f"art#{kind}#{at:017.6f}#{uuid.uuid4().hex[:8]}"},
                  "doc": {"S": json.dumps(doc, sort_keys=True, default=str)}},
            ConditionExpression="attribute_not_exists(sk)",
        )

    def get_artifacts(self, env: str, kind: str) -> list[dict[str, Any]]:
        items = self._query(env, f"art#{kind}#")
        items.sort(key=lambda a: a["recorded_at"], reverse=True)
        return items


def open_ledger(policy: Any, aws: Any, rootdir: Path) -> Ledger:
    """The default ledger for a policy (the ``llamadeploy_ledger_backend`` hook may replace it)."""
    if policy.ledger.backend == "file":
        path = Path(policy.ledger.path)
        return FileLedger(path if path.is_absolute() else rootdir / path)
    return DynamoLedger(aws.client("dynamodb"), policy.ledger.table)
