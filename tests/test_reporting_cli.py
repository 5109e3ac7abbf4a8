"""`llamadeploy report`: the Allure 3 CLI from tools/allure, categories in allurerc.json, history, errors."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from pytest_llamadeploy.cli import main
from pytest_llamadeploy.reporting import Attachment, record_stage, write_environment
from pytest_llamadeploy.reporting.cli import TOOLS_DIR

pytestmark = pytest.mark.sandbox  # the Allure CLI runs as a process (tests/conftest.py)

needs_allure = pytest.mark.skipif(
    not (TOOLS_DIR / "node_modules" / "allure" / "cli.js").is_file(),
    reason="Allure 3 CLI not installed: run `bash scripts/install-report-tools.sh`",
)


def _results(tmp_path: Path, release: str, status: str) -> Path:
    results = tmp_path / f"results-{release}"
    now = time.time()
    failure = ({"metric": "p95_latency", "value": 812, "threshold": 500, "window": "5m", "version": "4",
                "unit": "ms"} if status == "failed" else None)
    record_stage(results, env="sandbox", stage="shift50", release=release, status=status,
                 steps=[{"name": "shift 50% to version 4"}], attachments=[Attachment.json("stage decision", [])],
                 failure=failure, started=now - 5, stopped=now)
    write_environment(results, {"env": "sandbox", "stage": "shift50", "release": release})
    return results


@needs_allure
def test_report_groups_failures_by_category_and_keeps_history(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "history.jsonl"
    out = tmp_path / "report"
    for release, status in (("v1", "passed"), ("v2", "failed")):
        code = main(["report", "--results", str(_results(tmp_path, release, status)), "--out", str(out),
                     "--history", str(history)])
        assert code == 0, capsys.readouterr().err
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    # one history point per build: the second report shows the trend passed -> failed
    points = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    assert len(points) == 2
    statuses = [next(iter(p["testResults"].values()))["status"] for p in points]
    assert statuses == ["passed", "failed"]
    categories = (out / "widgets" / "categories.json").read_text()
    assert "Threshold breached" in categories
    assert "p95_latency = 812ms > threshold 500ms over 5m on version 4" in categories


@needs_allure
def test_single_file_report_is_one_html(tmp_path: Path) -> None:
    out = tmp_path / "single"
    assert main(["report", "--results", str(_results(tmp_path, "v2", "failed")), "--out", str(out),
                 "--single-file", "--no-history"]) == 0
    # self-contained: the app and the data are inlined (base64, one d("path","data") call per file)
    assert not list(out.glob("app-*.js")) and not (out / "data").exists()
    inlined = {path: base64.b64decode(data) for path, data in
               re.findall(r'd\("([^"]+)","([^"]*)"\)', (out / "index.html").read_text())}
    assert b"Threshold breached" in inlined["widgets/categories.json"]
    assert b"[sandbox] shift50 v2: stage verdict" in inlined["widgets/tree.json"]


@needs_allure
def test_two_releases_in_one_report_are_two_results_not_a_retry(tmp_path: Path) -> None:
    out = tmp_path / "rehearsal"
    assert main(["report", "--results", str(_results(tmp_path, "v1", "passed")), "--results",
                 str(_results(tmp_path, "v2", "failed")), "--out", str(out), "--no-history"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["total"] == 2 and summary["stats"].get("retries", 0) == 0, summary["stats"]
    assert summary["retryTests"] == []


@needs_allure
def test_refuses_to_replace_a_directory_that_is_not_a_report(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["report", "--results", str(_results(tmp_path, "v1", "passed")), "--out", str(out),
                 "--no-history"]) == 2
    assert "does not hold an Allure report" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_missing_results_dir_says_how_to_make_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "nope does not exist" in err and "--alluredir" in err


def test_missing_allure_cli_names_the_install_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLAMADEPLOY_ALLURE_CLI", str(tmp_path / "absent" / "cli.js"))
    code = main(["report", "--results", str(_results(tmp_path, "v1", "passed")), "--out", str(tmp_path / "r"),
                 "--no-history"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bash scripts/install-report-tools.sh" in err and "npm ci --prefix tools/allure" in err


@needs_allure
def test_an_initialised_repository_uses_its_own_tools_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed package has no tools/ beside it: `llamadeploy init` writes tools/allure/package*.json and
    # the report job runs `npm ci --prefix tools/allure` in the repository (here: a link to this checkout's).
    import pytest_llamadeploy.reporting.cli as report_cli

    repo = tmp_path / "service"
    (repo / "tools" / "allure").mkdir(parents=True)
    (repo / "tools" / "allure" / "node_modules").symlink_to(TOOLS_DIR / "node_modules")
    monkeypatch.setattr(report_cli, "TOOLS_DIR", tmp_path / "site-packages" / "tools" / "allure")
    monkeypatch.delenv("LLAMADEPLOY_ALLURE_CLI", raising=False)
    monkeypatch.chdir(repo)
    assert main(["report", "--results", str(_results(tmp_path, "v1", "passed")), "--out", "report",
                 "--no-history"]) == 0
    assert (repo / "report" / "index.html").is_file()
