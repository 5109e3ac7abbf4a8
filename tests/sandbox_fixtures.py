"""One real sandbox shared by every test (and every pytest-xdist worker) of a run.

Loaded from ``tests/conftest.py`` with ``pytest_plugins = ["sandbox_fixtures"]``.

Lifecycle (the choice, and why): the sandbox lives in the run's shared temp
root (``getbasetemp().parent`` under xdist, ``getbasetemp()`` without), so it
never collides with another engineer's run. Under ``FileLock(root /
"sandbox.lock")`` each worker increments a user counter; the first one brings
the sandbox up (``up`` is idempotent, so whoever comes first does), and the
worker that brings the counter back to 0 brings it down. No worker waits for
the others at the end; the price is that a worker arriving after everyone else
has left starts a second sandbox, which is correct, only slower.

Tests that change shared routing or faults (alias weights, ``fault``) take the
function fixture ``sandbox_exclusive``: it holds a second cross-worker lock for
the test and resets the sandbox before and after (alias ``live`` back on the
baseline version, no faults on any release). Tests that only read, or deploy a
release under a name of their own, use ``sandbox`` directly and run in parallel.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llamadeploy.sandbox.state import ENV_DIR, SandboxState

if TYPE_CHECKING:
    from tests.support.stagerun import BadReleaseRun

#: Background traffic of the shared sandbox (requests/s); bake windows need data, tests need CPU.
TRAFFIC_RATE_ENV = "LLAMADEPLOY_TEST_TRAFFIC_RATE"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox: starts real sandbox processes (slow; safe under xdist -n 2)")


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder every xdist worker of this run shares (and no other run does)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _adjust_users(counter: Path, delta: int) -> int:
    users = int(counter.read_text() or 0) if counter.exists() else 0
    users = max(users + delta, 0)
    counter.write_text(str(users))
    return users


#: The envs whose stages run against the shared sandbox (policies/sandbox*.yaml).
SANDBOX_ENVS = ("sandbox", "sandbox-aws")


def clear_ledger(dynamodb: Any, table: str, envs: tuple[str, ...] = SANDBOX_ENVS) -> int:
    """Delete the stage records and the lock of ``envs`` (artifacts, e.g. backups, stay); returns how many.

    A stage a watchdog killed leaves its ``started`` record and its lock: without this every later
    sandbox stage of the run is refused ("never finished", "locked") and fails for a reason not its own.
    """
    deleted = 0
    for env in envs:
        for prefix in ("rec#", "lock"):
            kwargs: dict[str, Any] = {"TableName": table, "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
                                      "ExpressionAttributeValues": {":pk": {"S": f"env#{env}"}, ":p": {"S": prefix}},
                                      "ProjectionExpression": "pk, sk", "ConsistentRead": True}
            while True:
                try:
                    page = dynamodb.query(**kwargs)
                except dynamodb.exceptions.ResourceNotFoundException:
                    return deleted  # no stage has run yet: no ledger table
                for item in page.get("Items", []):
                    dynamodb.delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})
                    deleted += 1
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return deleted


def reset_sandbox(state: SandboxState) -> SandboxState:
    """Aliases ``live`` and ``preview`` back on the baseline version of each function (no weights), no faults,
    and the sandbox envs' ledger records and lock cleared (a stage killed by a watchdog leaves both)."""
    from pytest_llamadeploy.policy import load_policy
    from pytest_llamadeploy.sandbox.deploy import clear_faults, release_running, state_lock
    from pytest_llamadeploy.sandbox.provision import ALIAS, PREVIEW_ALIAS, sandbox_aws

    with state_lock(state.directory):
        fresh = SandboxState.load(state.directory)
        table = load_policy(Path(__file__).resolve().parents[1] / "policies", "sandbox").policy.ledger.table
        clear_ledger(sandbox_aws(fresh).client("dynamodb"), table)
        baseline = fresh.extra["baseline"]["lambda_versions"]
        lam = sandbox_aws(fresh).client("lambda")
        for function, version in baseline.items():
            for alias in (ALIAS, PREVIEW_ALIAS):
                lam.update_alias(FunctionName=function, Name=alias, FunctionVersion=str(version),
                                 RoutingConfig={"AdditionalVersionWeights": {}})
        for release in fresh.versions:
            if release_running(fresh, release):
                clear_faults(fresh, release)
        fresh.save()
    # The service keeps its own timings and counters in Redis (llama:stats:*); a test that ran a
    # slow_query_ms fault must not leave its 300 ms samples to the next test's DB p95.
    import redis

    client = redis.Redis.from_url(fresh.redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match="llama:stats:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    return fresh


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    """The running shared sandbox; ``LLAMADEPLOY_SANDBOX_DIR`` points at it for the whole session."""
    from filelock import FileLock

    from pytest_llamadeploy.sandbox import cli

    root = shared_root(tmp_path_factory)
    directory = root / "sandbox"
    counter = root / "sandbox.users"
    rate = float(os.environ.get(TRAFFIC_RATE_ENV, cli.DEFAULT_TRAFFIC_RATE))
    with FileLock(str(root / "sandbox.lock")):
        started = time.monotonic()
        state, fresh = cli.up(directory, traffic_rate=rate)
        if fresh:
            (root / "sandbox.up-seconds").write_text(f"{time.monotonic() - started:.1f}")
        _adjust_users(counter, +1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(ENV_DIR, str(directory))
            yield state
    finally:
        with FileLock(str(root / "sandbox.lock")):
            if _adjust_users(counter, -1) == 0 and not cli.down(directory):
                raise RuntimeError(f"sandbox in {directory} did not stop cleanly (see the messages above)")


@contextlib.contextmanager
def exclusive(sandbox: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    """Hold the shared sandbox alone (across xdist workers), reset before and after.

    A context manager as well as the fixture below, so a module-scoped fixture can hold it
    for a whole module that moves the alias or sets faults once and asserts many things.
    """
    from filelock import FileLock

    with FileLock(str(shared_root(tmp_path_factory) / "sandbox-exclusive.lock")):
        state = reset_sandbox(sandbox)
        try:
            yield state
        finally:
            reset_sandbox(sandbox)


@pytest.fixture
def sandbox_exclusive(sandbox: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    """The shared sandbox, reset and held for this test alone (across xdist workers)."""
    with exclusive(sandbox, tmp_path_factory) as state:
        yield state


@pytest.fixture(scope="session")
def bad_release(sandbox: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> BadReleaseRun:
    """One bad release, run once for every module that reads it (the watch's rollback, the report).

    Its deploy passes; ``error_rate=0.3`` injected mid-bake at shift10 is caught by the CloudWatch
    trigger and rolled back (tests/support/stagerun.py). Two stages of ~10 and ~25 s: each module ran
    its own before. The run holds the sandbox alone; what it leaves is its records, read here, and its
    release, deployed at 0 %.
    """
    from tests.support.stagerun import bad_release_run

    with exclusive(sandbox, tmp_path_factory):
        return bad_release_run(tmp_path_factory.mktemp("bad-release"))
