"""Ledger backends: records, the env lock with owner and lease, takeovers, artifacts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from pytest_llamadeploy.ledger import DynamoLedger, FileLedger, LockHeld, StageRecord, new_run_id, this_owner


@pytest.fixture(params=["file", "dynamodb"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "file":
        return FileLedger(tmp_path / "ledger")
    url = request.getfixturevalue("aws")
    return DynamoLedger(boto3.client("dynamodb", region_name="us-east-1", endpoint_url=url), "ledger-test")


def _record(stage: str, status: str = "started", release: str = "v1") -> StageRecord:
    return StageRecord(env="prod", release=release, stage=stage, status=status, run_id=new_run_id(),
                       owner=this_owner(), started_at=1.0, new_versions={"onchain-api": "2"})


def test_records_round_trip(ledger) -> None:
    assert ledger.get("prod", "v1", "deploy") is None and ledger.records("prod") == []
    rec = _record("deploy")
    ledger.put(rec)
    rec.status = "passed"
    ledger.put(rec)
    got = ledger.get("prod", "v1", "deploy")
    assert got.status == "passed" and got.new_versions == {"onchain-api": "2"}
    ledger.put(_record("shift10"))
    assert [r.stage for r in ledger.records("prod")] == ["deploy", "shift10"]
    assert ledger.records("staging") == []


def test_lock_refuses_a_second_holder_and_names_it(ledger) -> None:
    assert ledger.acquire_lock("prod", "run-a", 60, stage="shift10", release="v1") is None
    with pytest.raises(LockHeld) as info:
        ledger.acquire_lock("prod", "run-b", 60)
    message = str(info.value)
    assert this_owner() in message and "run-a" in message and "since" in message and "shift10 of v1" in message
    assert ledger.acquire_lock("prod", "run-a", 60) is None  # re-entrant for its own run
    ledger.release_lock("prod", "run-a")
    assert ledger.current_lock("prod") is None
    assert ledger.acquire_lock("prod", "run-b", 60) is None


def test_expired_lease_is_taken_over_and_reported(ledger) -> None:
    ledger.acquire_lock("prod", "run-a", -1)  # already expired
    taken = ledger.acquire_lock("prod", "run-b", 60)
    assert taken is not None and taken.run_id == "run-a" and "lease expired" in taken.stale_reason(10**10)
    assert ledger.current_lock("prod").run_id == "run-b"


def test_lock_of_a_dead_process_on_this_host_is_stale(ledger) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ledger.acquire_lock("prod", "run-a", 3600)
    lock = ledger.current_lock("prod")
    lock.owner = lock.owner.rsplit(":", 1)[0] + ":" + dead.stdout.strip()
    assert "process" in lock.stale_reason(lock.acquired_at) and "is gone" in lock.stale_reason(lock.acquired_at)
    live = ledger.current_lock("prod")
    assert live.stale_reason(live.acquired_at) is None  # our own pid is alive


def test_artifacts_newest_first(ledger) -> None:
    ledger.put_artifact("prod", "v1", "backup", {"id": "a"})
    ledger.put_artifact("prod", "v2", "backup", {"id": "b"})
    ledger.put_artifact("prod", "v2", "restore", {"id": "c"})
    got = ledger.get_artifacts("prod", "backup")
    assert [a["id"] for a in got] == ["b", "a"] and got[0]["release"] == "v2"
