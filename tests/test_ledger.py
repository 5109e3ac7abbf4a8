"""Ledger backends: records, the env lock with owner and lease, takeovers, artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from pytest_llamadeploy.lease import Heartbeat, owner_identity, process_start
from pytest_llamadeploy.ledger import (
    DynamoLedger,
    FileLedger,
    LeaseLost,
    LedgerConflict,
    LedgerCorrupt,
    LockHeld,
    LockInfo,
    StageRecord,
    new_run_id,
    this_owner,
)


@pytest.fixture(params=["file", pytest.param("dynamodb", marks=pytest.mark.sandbox)])  # moto in server mode
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


@pytest.mark.sandbox
def test_lock_of_a_dead_process_on_this_host_is_stale(ledger) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ledger.acquire_lock("prod", "run-a", 3600)
    lock = ledger.current_lock("prod")
    lock.identity["pid"] = int(dead.stdout.strip())
    assert "process" in lock.stale_reason(lock.acquired_at) and "is gone" in lock.stale_reason(lock.acquired_at)
    live = ledger.current_lock("prod")
    assert live.stale_reason(live.acquired_at) is None  # our own pid is alive


def test_artifacts_newest_first(ledger) -> None:
    ledger.put_artifact("prod", "v1", "backup", {"id": "a"})
    ledger.put_artifact("prod", "v2", "backup", {"id": "b"})
    ledger.put_artifact("prod", "v2", "restore", {"id": "c"})
    got = ledger.get_artifacts("prod", "backup")
    assert [a["id"] for a in got] == ["b", "a"] and got[0]["release"] == "v2"


# ----------------------------------------------------------------- fencing (finding 3)


def test_record_writes_are_fenced_on_the_lock(ledger) -> None:
    ledger.acquire_lock("prod", "run-a", 60)
    rec = _record("shift10")
    rec.run_id = "run-a"
    ledger.put(rec, fence="run-a")
    # run-a's lock is taken over (here: released and taken by run-b); run-a must not overwrite run-b's record.
    ledger.release_lock("prod", "run-a")
    ledger.acquire_lock("prod", "run-b", 60)
    theirs = _record("shift10", status="rolled_back")
    theirs.run_id = "run-b"
    ledger.put(theirs, fence="run-b")
    rec.status = "passed"
    with pytest.raises(LeaseLost, match="run run-a no longer holds the lock of 'prod'.*run run-b"):
        ledger.put(rec, fence="run-a")
    got = ledger.get("prod", "v1", "shift10")
    assert (got.status, got.run_id) == ("rolled_back", "run-b")
    with pytest.raises(LeaseLost):
        ledger.renew_lock("prod", "run-a", 60)



def test_a_write_without_the_lock_never_overwrites_another_runs_record(ledger) -> None:
    """Issue 15: the DynamoDB record write was unconditional; two writers racing on a stage lost one silently."""
    mine = _record("shift10")
    ledger.put(mine)
    mine.status = "passed"
    ledger.put(mine)  # a run may update its own record
    racer = _record("shift10", status="rolled_back")  # another run, holding no lock
    with pytest.raises(LedgerConflict, match=rf"shift10 of v1 in prod is run {mine.run_id} \(passed\)'s record, "
                                             rf"and run {racer.run_id} does not hold the lock"):
        ledger.put(racer)
    got = ledger.get("prod", "v1", "shift10")
    assert (got.run_id, got.status) == (mine.run_id, "passed")
    ledger.acquire_lock("prod", racer.run_id, 60)
    ledger.put(racer, fence=racer.run_id)  # the lock's holder may (a rollback resolving a killed run does)
    assert ledger.get("prod", "v1", "shift10").run_id == racer.run_id


def test_renewals_count_and_store_the_lease(ledger) -> None:
    ledger.acquire_lock("prod", "run-a", 60)
    first = ledger.current_lock("prod")
    assert (first.counter, first.lease) == (0, 60.0) and first.identity == owner_identity()
    ledger.renew_lock("prod", "run-a", 90)
    ledger.renew_lock("prod", "run-a", 90)
    renewed = ledger.current_lock("prod")
    assert (renewed.counter, renewed.lease) == (2, 90.0) and renewed.expires_at > first.expires_at


def test_wall_clock_expiry_alone_does_not_hand_over_a_renewed_lock(ledger, monkeypatch) -> None:
    """A holder whose clock runs an hour behind writes expiries in the past; it is alive as long as it renews."""
    import pytest_llamadeploy.ledger as ledger_module

    lease = 0.6
    skewed: set[threading.Thread] = set()
    real_now = ledger_module.now
    monkeypatch.setattr(ledger_module, "now",
                        lambda: real_now() - (3600 if threading.current_thread() in skewed else 0))
    stop = threading.Event()

    def holder() -> None:  # run-a's heartbeat, on the skewed clock
        while not stop.wait(0.1):
            ledger.renew_lock("prod", "run-a", lease)

    ledger.acquire_lock("prod", "run-a", lease)
    thread = threading.Thread(target=holder, daemon=True)
    skewed.add(thread)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while ledger.current_lock("prod").counter < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ledger.current_lock("prod").expires_at < time.time() - 3000  # "expired" by the taker's clock
        started = time.monotonic()
        with pytest.raises(LockHeld):
            ledger.acquire_lock("prod", "run-b", 60)
        assert time.monotonic() - started < lease  # the renewal was seen before the lease was up
    finally:
        stop.set()
        thread.join(5)
    # The holder stopped renewing: taken over only after one full lease watched unchanged on the taker's clock.
    started = time.monotonic()
    taken = ledger.acquire_lock("prod", "run-b", 60)
    assert time.monotonic() - started >= lease
    assert taken.run_id == "run-a" and ledger.current_lock("prod").run_id == "run-b"


@pytest.mark.sandbox
@pytest.mark.parametrize("differs", ["boot_id", "pidns", "host"])
def test_takeover_does_not_trust_hostname_and_pid_alone(tmp_path: Path, differs: str) -> None:
    """A dead PID proves nothing about a holder in another container or boot that shares our host name."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    identity = {**owner_identity(), "pid": int(dead.stdout.strip()), differs: "elsewhere"}
    lock = LockInfo("prod", this_owner().rsplit(":", 1)[0] + f":{identity['pid']}", "run-a", time.time(),
                    time.time() + 3600, lease=3600, identity=identity)
    assert lock.stale_reason(time.time()) is None
    ledger = FileLedger(tmp_path)
    ledger.acquire_lock("prod", "run-a", 3600)
    path = ledger._path("prod")
    doc = json.loads(path.read_text())
    doc["lock"]["identity"] = identity
    path.write_text(json.dumps(doc))
    with pytest.raises(LockHeld):
        ledger.acquire_lock("prod", "run-b", 60)


@pytest.mark.sandbox
def test_a_reused_pid_is_not_the_holder() -> None:
    """The holder's PID now runs another process (another start time): the holder is gone."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        identity = {**owner_identity(), "pid": sleeper.pid, "start": "1"}
        lock = LockInfo("prod", "x", "run-a", time.time(), time.time() + 3600, lease=3600, identity=identity)
        assert "PID now belongs to another process" in lock.stale_reason(time.time())
        identity["start"] = process_start(sleeper.pid)  # the same process: still the holder
        assert LockInfo("prod", "x", "run-a", 0, time.time() + 3600, identity=identity).stale_reason(time.time()) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_heartbeat_notices_a_takeover(tmp_path: Path) -> None:
    ledger = FileLedger(tmp_path)
    ledger.acquire_lock("prod", "run-a", 0.3)
    lost: list[str] = []
    beat = Heartbeat(lambda: ledger.renew_lock("prod", "run-a", 0.3), 0.3, on_lost=lost.append,
                     conflict=LedgerConflict).start()
    try:
        deadline = time.monotonic() + 5
        while beat.renewals < 2:
            assert time.monotonic() < deadline, "the heartbeat did not renew"
            time.sleep(0.02)
        assert beat.check() is None and ledger.current_lock("prod").counter >= 2
        ledger.release_lock("prod", "run-a")
        ledger.acquire_lock("prod", "run-b", 60)  # another run holds it now
        while not lost:
            assert time.monotonic() < deadline, "the heartbeat did not notice"
            time.sleep(0.02)
    finally:
        beat.stop()
    assert "another run took the lock" in lost[0] and "run-b" in lost[0] and beat.check() == lost[0]


def test_heartbeat_that_cannot_renew_gives_up_before_its_lease_ends(tmp_path: Path) -> None:
    ledger = FileLedger(tmp_path / "gone")
    ledger.acquire_lock("prod", "run-a", 0.4)
    lost: list[str] = []

    def renew() -> None:
        raise OSError("ledger unreachable")

    began = time.monotonic()
    beat = Heartbeat(renew, 0.4, on_lost=lost.append, conflict=LedgerConflict, acquired_at=began).start()
    try:
        while not lost:
            assert time.monotonic() - began < 5
            time.sleep(0.02)
    finally:
        beat.stop()
    assert time.monotonic() - began < 0.4  # stopped acting before the lease could lapse for a taker
    assert "was not renewed" in lost[0] and "ledger unreachable" in lost[0]


# ------------------------------------------------------------ file ledger (finding 7)


def test_file_ledger_writes_atomically_and_keeps_the_previous_copy(tmp_path: Path, monkeypatch) -> None:
    ledger = FileLedger(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    ledger.put(_record("deploy"))
    assert len(synced) == 2  # the new file's data, then the folder holding the rename
    first = ledger._path("prod").read_text()
    ledger.put(_record("shift10"))
    prev = tmp_path / "prod.json.prev"
    assert prev.read_text() == first and "shift10" in ledger._path("prod").read_text()
    # A crash before the rename leaves the last complete file, not half of the new one.
    real_replace = os.replace

    def crash(src, dst):  # noqa: ANN001
        if str(dst).endswith("prod.json"):
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        ledger.put(_record("shift50"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert [r.stage for r in ledger.records("prod")] == ["deploy", "shift10"]


@pytest.mark.sandbox
def test_corrupt_file_ledger_is_refused_with_a_recovery_command(tmp_path: Path) -> None:
    ledger = FileLedger(tmp_path)
    ledger.put(_record("deploy"))
    ledger.put(_record("shift10"))
    path = ledger._path("prod")
    path.write_text(path.read_text()[:40])  # truncated
    with pytest.raises(LedgerCorrupt) as info:
        ledger.records("prod")
    message = str(info.value)
    assert str(path) in message and f"cp {path}.prev {path}" in message and "nothing was changed" in message
    with pytest.raises(LedgerCorrupt):
        ledger.put(_record("shift50"))  # never written over
    subprocess.run(["cp", f"{path}.prev", str(path)], check=True)
    assert [r.stage for r in ledger.records("prod")] == ["deploy"]
    path.write_text("{")
    (tmp_path / "prod.json.prev").write_text("[]")
    with pytest.raises(LedgerCorrupt, match=rf"mv {path} {path}.corrupt"):
        ledger.current_lock("prod")
