"""`llamadeploy summary`: the stage verdict and its metric table as Markdown (CI's job summary)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pytest_llamadeploy.cli import main as cli
from pytest_llamadeploy.reporting import Attachment, record_stage
from tests.test_gate import gate, project  # noqa: F401  (the stand-in gate project fixture)

pytest_plugins = ["pytester"]

DECISION = {
    "env": "prod", "stage": "shift10", "release": "v1.2.3", "status": "rolled_back",
    "reason": "rollback triggered: lambda error rate 9% > 5% | seen on postgresql://app:hunter2@db/defillama",
    "approver": "alice", "policy_sha256": "ab" * 32,
    "versions": {"old": {"onchain-api": "1"}, "new": {"onchain-api": "2"}},
    "weights_before": {"onchain-api": {"version": "1", "weights": {"2": 0.1}}},
    "weights_after": {"onchain-api": {"version": "1", "weights": {}}},
    "preconditions": [{"name": "lock", "ok": True, "detail": "prod is free"}],
    "metrics": [
        {"metric": "lambda_error_rate", "function": "onchain-api", "version": "new v2", "value": 0.0912, "op": "<=",
         "threshold": 0.05, "window": "1m", "samples": 40, "verdict": "fail"},
        {"metric": "lambda_duration_p95", "function": "onchain-api", "version": "new v2", "value": 212.0, "op": "<",
         "threshold": 500.0, "window": "5m", "samples": 40, "verdict": "pass"},
    ],
    "failed_tests": [],
}


def _verdict(results: Path, release: str, decision: dict, stop: float) -> None:
    record_stage(results, env="prod", stage="shift10", release=release, status="failed", steps=[],
                 attachments=[Attachment.json("stage decision", decision)], failure={"message": decision["reason"]},
                 started=stop - 5, stopped=stop)


def test_summary_renders_the_verdict_and_the_metric_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    _verdict(tmp_path, "v1.2.2", {**DECISION, "release": "v1.2.2", "status": "passed"}, now - 60)  # an older run
    _verdict(tmp_path, "v1.2.3", DECISION, now)
    assert cli(["summary", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "### :leftwards_arrow_with_hook: llamadeploy: prod shift10 v1.2.3: ROLLED_BACK"
    assert "> rollback triggered: lambda error rate 9% > 5% \\| seen on postgresql://app:***@db/defillama" in lines
    assert "hunter2" not in out
    assert "| alias before | onchain-api v1 + v2 10% |" in lines and "| alias after | onchain-api v1 |" in lines
    assert "| approver | alice |" in lines
    assert "| metric | function | version | value | op | threshold | window | samples | verdict |" in lines
    assert "| lambda_error_rate | onchain-api | new v2 | 0.0912 | <= | 0.05 | 1m | 40 | fail |" in lines
    assert "Preconditions not met" not in out  # the lock was free
    # filters pick an older verdict
    assert cli(["summary", "--results", str(tmp_path), "--release", "v1.2.2"]) == 0
    assert capsys.readouterr().out.startswith("### :white_check_mark: llamadeploy: prod shift10 v1.2.2: PASSED")


def test_summary_without_a_verdict_says_the_gate_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["summary", "--results", str(tmp_path / "allure-results")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### :no_entry: llamadeploy: no stage verdict in")
    assert "refused before changing anything (exit 4" in out


def test_summary_of_a_real_gate_run(project: pytest.Pytester, aws: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAIL_GATE_AT", "deploy")
    assert gate(project, "deploy").ret == 1
    capsys.readouterr()  # pytester's own lines
    assert cli(["summary", "--results", str(project.path / "allure-results")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "### :leftwards_arrow_with_hook: llamadeploy: fastprod deploy v2: ROLLED_BACK"
    assert "> threshold breached: 1 gate test(s) failed" in out
    assert "| new versions | onchain-api v2, onchain-ws v2 |" in out
    assert "#### Failed gate tests (1)" in out and "gate failed at deploy on purpose" in out
