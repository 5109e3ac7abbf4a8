"""One load per gate session, shared by the performance tests (and by every xdist worker).

The first worker to get the lock runs Locust (a subprocess) with the policy's
users, spawn rate and duration against the stage's targets and writes the
evidence next to the Locust artifacts; the others read it. Each test then
gates one runbook threshold, so a report says which one failed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.load.gate import EVIDENCE_FILE, PerformanceEvidence, Thresholds, run_performance
from pytest_llamadeploy.load.options import LoadOptions
from pytest_llamadeploy.load.runner import LocustError
from pytest_llamadeploy.reporting.categories import PROVIDER_ERROR


def _artifacts(llama: Any) -> Path:
    base = Path(llama.artifacts_dir) if llama.artifacts_dir else Path(tempfile.mkdtemp(prefix="llamadeploy-perf-"))
    folder = base / "performance"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def performance_thresholds(llama: Any) -> Thresholds:
    return Thresholds.from_policy(llama.policy.performance)


@pytest.fixture(scope="session")
def performance_run(llama: Any, request: pytest.FixtureRequest) -> PerformanceEvidence:
    from filelock import FileLock

    from pytest_llamadeploy.testdata import remove_keys, run_tag, write_refusal

    perf = llama.policy.performance
    targets = llama.resolved_targets
    # The load's TVL events go to a chain tagged with the run, whose Redis key is removed after the load;
    # where the policy does not let the suite write, it publishes none (test_data.write).
    chain = "" if write_refusal(llama.policy, llama.env, "performance") else f"{run_tag(llama.run_id)}-load"
    options = LoadOptions.from_config(request.config)
    folder = _artifacts(llama)
    with FileLock(str(folder / ".load.lock")):
        done = folder / EVIDENCE_FILE
        if done.is_file():
            return PerformanceEvidence.from_json(json.loads(done.read_text()))
        try:
            return run_performance(
                api_url=targets.require("api_url").rstrip("/"),
                ws_url=targets.ws_url,
                redis_url=targets.redis_url,
                postgres_dsn=targets.postgres_dsn,
                users=perf.users,
                spawn_rate=perf.spawn_rate,
                duration=perf.duration,
                queries=perf.queries,
                artifacts_dir=folder,
                options=options,
                release=llama.release,
                extra_env={"LLAMA_LOAD_EVENT_CHAIN": chain},
            )
        except (LocustError, ValueError) as exc:
            pytest.fail(f"{PROVIDER_ERROR} the performance load could not run: {exc}", pytrace=False)
        finally:  # whatever the load's outcome
            if chain and targets.redis_url:
                remove_keys(targets.redis_url, chain)
