"""The ledger: where stage results and the environment lock live.

Separate CI jobs, possibly on separate machines, gate on each other through it:
``shift50`` runs only if the ledger says ``shift10`` passed for the same
release. Two backends: a DynamoDB table (conditional writes; the default on
AWS and in the sandbox) and a local JSON file (single machine).

A run writes ``started`` before it changes anything and the final status after,
so a run killed in between leaves a ``started`` record that the next run sees
and must resolve. The lock is one item per env with an owner and a lease: a
second run fails fast naming the holder; an expired lease, or a holder on this
host whose process is gone, can be taken over, and the takeover is recorded.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .procs import pid_alive

STATUSES = ("started", "passed", "failed", "rolled_back", "aborted")
FINAL = ("passed", "failed", "rolled_back", "aborted")


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

    def describe(self) -> str:
        return (
            f"held by {self.owner} (run {self.run_id}, {self.stage or '?'} of {self.release or '?'}) "
            f"since {iso(self.acquired_at)}, lease until {iso(self.expires_at)}"
        )

    def stale_reason(self, at: float) -> str | None:
        """Why this lock may be taken over, or None if its holder may still be working."""
        if self.expires_at <= at:
            return f"its lease expired at {iso(self.expires_at)}"
        user_host, _, pid = self.owner.rpartition(":")
        host = user_host.partition("@")[2]
        if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            return f"its process {pid} on this host is gone"
        return None


class LockHeld(Exception):
    def __init__(self, lock: LockInfo):
        self.lock = lock
        super().__init__(f"env {lock.env!r} is locked: {lock.describe()}")


class LedgerConflict(Exception):
    """A conditional write lost: someone else changed the record or the lock."""


class Ledger(Protocol):
    def get(self, env: str, release: str, stage: str) -> StageRecord | None: ...
    def put(self, record: StageRecord) -> None: ...
    def records(self, env: str) -> list[StageRecord]: ...
    def acquire_lock(self, env: str, run_id: str, lease: float, *, stage: str = "", release: str = "") -> LockInfo | None: ...
    def renew_lock(self, env: str, run_id: str, lease: float) -> None: ...
    def release_lock(self, env: str, run_id: str) -> None: ...
    def current_lock(self, env: str) -> LockInfo | None: ...
    def put_artifact(self, env: str, release: str, kind: str, data: dict[str, Any]) -> None: ...
    def get_artifacts(self, env: str, kind: str) -> list[dict[str, Any]]: ...
    def describe(self) -> str: ...


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- file


class FileLedger:
    """One JSON file per env, updated under a file lock with atomic renames."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    def describe(self) -> str:
        return f"file {self.directory}"

    def _path(self, env: str) -> Path:
        return self.directory / f"{env}.json"

    def _read(self, env: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(env).read_text())
        except FileNotFoundError:
            return {"records": {}, "lock": None, "artifacts": []}

    def _write(self, env: str, doc: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(env).with_suffix(f".tmp.{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        os.replace(tmp, self._path(env))

    def _mutex(self, env: str):  # noqa: ANN202 - filelock's type
        from filelock import FileLock

        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / f".{env}.lock"), timeout=30)

    def get(self, env: str, release: str, stage: str) -> StageRecord | None:
        data = self._read(env)["records"].get(f"{release}/{stage}")
        return StageRecord.from_json(data) if data else None

    def put(self, record: StageRecord) -> None:
        with self._mutex(record.env):
            doc = self._read(record.env)
            doc["records"][f"{record.release}/{record.stage}"] = record.to_json()
            self._write(record.env, doc)

    def records(self, env: str) -> list[StageRecord]:
        recs = [StageRecord.from_json(d) for d in self._read(env)["records"].values()]
        return sorted(recs, key=lambda r: r.started_at)

    def acquire_lock(self, env: str, run_id: str, lease: float, *, stage: str = "", release: str = "") -> LockInfo | None:
        """Take the lock; return the stale lock that was taken over (None if it was free); raise LockHeld."""
        with self._mutex(env):
            doc = self._read(env)
            at = now()
            previous = LockInfo(**doc["lock"]) if doc.get("lock") else None
            if previous and previous.run_id != run_id and previous.stale_reason(at) is None:
                raise LockHeld(previous)
            doc["lock"] = asdict(LockInfo(env, this_owner(), run_id, at, at + lease, stage, release))
            self._write(env, doc)
            return previous if previous and previous.run_id != run_id else None

    def renew_lock(self, env: str, run_id: str, lease: float) -> None:
        with self._mutex(env):
            doc = self._read(env)
            lock = doc.get("lock")
            if not lock or lock["run_id"] != run_id:
                raise LedgerConflict(f"env {env!r}: the lock of run {run_id} was taken by {lock and lock['owner']}")
            lock["expires_at"] = now() + lease
            self._write(env, doc)

    def release_lock(self, env: str, run_id: str) -> None:
        with self._mutex(env):
            doc = self._read(env)
            if doc.get("lock") and doc["lock"]["run_id"] == run_id:
                doc["lock"] = None
                self._write(env, doc)

    def current_lock(self, env: str) -> LockInfo | None:
        lock = self._read(env).get("lock")
        return LockInfo(**lock) if lock else None

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
    never both believe they hold an env.
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

    def _get_item(self, env: str, sk: str) -> dict[str, Any] | None:
        if not self._table_exists():
            return None
        item = self.client.get_item(TableName=self.table, Key={"pk": self._pk(env), "sk": {"S": sk}}, ConsistentRead=True).get("Item")
        return json.loads(item["doc"]["S"]) if item else None

    def get(self, env: str, release: str, stage: str) -> StageRecord | None:
        data = self._get_item(env, f"rec#{release}#{stage}")
        return StageRecord.from_json(data) if data else None

    def put(self, record: StageRecord) -> None:
        self.ensure_table()
        self.client.put_item(
            TableName=self.table,
            Item={
                "pk": self._pk(record.env),
                "sk": {"S": f"rec#{record.release}#{record.stage}"},
                "status": {"S": record.status},
                "run_id": {"S": record.run_id},
                "doc": {"S": json.dumps(record.to_json(), sort_keys=True)},
            },
        )

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
            items.extend(json.loads(i["doc"]["S"]) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def records(self, env: str) -> list[StageRecord]:
        recs = [StageRecord.from_json(d) for d in self._query(env, "rec#")]
        return sorted(recs, key=lambda r: r.started_at)

    def acquire_lock(self, env: str, run_id: str, lease: float, *, stage: str = "", release: str = "") -> LockInfo | None:
        self.ensure_table()
        at = now()
        previous = self.current_lock(env)
        info = LockInfo(env, this_owner(), run_id, at, at + lease, stage, release)
        item = {
            "pk": self._pk(env),
            "sk": {"S": "lock"},
            "run_id": {"S": run_id},
            "expires_at": {"N": repr(info.expires_at)},
            "doc": {"S": json.dumps(asdict(info))},
        }
        if previous is None or previous.run_id == run_id:
            condition = "attribute_not_exists(pk) OR run_id = :run"
            values: dict[str, Any] = {":run": {"S": run_id}}
        else:
            if previous.stale_reason(at) is None:
                raise LockHeld(previous)
            # Take over exactly the stale lock we looked at, nobody else's.
            condition = "run_id = :prev"
            values = {":prev": {"S": previous.run_id}}
        try:
            self.client.put_item(TableName=self.table, Item=item, ConditionExpression=condition,
                                 ExpressionAttributeValues=values)
        except self.client.exceptions.ConditionalCheckFailedException:
            holder = self.current_lock(env)
            if holder is None:
                raise LedgerConflict(f"env {env!r}: the lock changed while taking it; run again") from None
            raise LockHeld(holder) from None
        return previous if previous and previous.run_id != run_id else None

    def renew_lock(self, env: str, run_id: str, lease: float) -> None:
        self.ensure_table()
        current = self.current_lock(env)
        if current is None or current.run_id != run_id:
            raise LedgerConflict(f"env {env!r}: the lock of run {run_id} is held by {current and current.owner}")
        current.expires_at = now() + lease
        try:
            self.client.put_item(
                TableName=self.table,
                Item={"pk": self._pk(env), "sk": {"S": "lock"}, "run_id": {"S": run_id},
                      "expires_at": {"N": repr(current.expires_at)}, "doc": {"S": json.dumps(asdict(current))}},
                ConditionExpression="run_id = :run",
                ExpressionAttributeValues={":run": {"S": run_id}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise LedgerConflict(f"env {env!r}: the lock of run {run_id} was taken over") from None

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
        return LockInfo(**data) if data else None

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
