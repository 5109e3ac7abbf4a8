"""The report as a reviewer sees it: built with `llamadeploy report`, opened in headless Chromium.

Results: one failing stage verdict (record_stage, as the gate core writes it)
plus a real pytest run with allure-pytest of a small gate test that fails with a
threshold message. Later this switches to a sandbox run with a bad release.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llamadeploy.cli import main
from pytest_llamadeploy.reporting import Attachment, plot_series, record_stage, write_environment
from pytest_llamadeploy.reporting.cli import TOOLS_DIR

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium")
CHROMIUM_TIMEOUT_S = 90

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed and could not be: run "
                                                "`bash scripts/install-report-tools.sh` (needs apt)"),
    pytest.mark.skipif(not (TOOLS_DIR / "node_modules" / "allure" / "cli.js").is_file(),
                       reason="Allure 3 CLI not installed: run `bash scripts/install-report-tools.sh`"),
]

GATE_TEST = '''
import pytest
from pytest_llamadeploy.reporting import apply_labels, threshold_message

def pytest_collection_modifyitems(items):
    for item in items:
        apply_labels(item, env="sandbox", stage="shift10", release="v2", suite="monitoring",
                     versions={"blue": "v1 (3)", "green": "v2 (4)"})
'''


def _failing_stage_results(results: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.time() - 300
    error_rate = {"v1 (3)": [(start + 30 * i, 0.002) for i in range(10)],
                  "v2 (4)": [(start + 30 * i, 0.004 + 0.011 * i) for i in range(10)]}
    decision = [
        {"metric": "error_rate", "value": 0.092, "threshold": 0.05, "window": "5m", "version": "4",
         "verdict": "breached"},
        {"metric": "p95_latency_ms", "value": 212.0, "threshold": 500, "window": "5m", "version": "4",
         "verdict": "ok"},
    ]
    record_stage(
        results, env="sandbox", stage="shift10", release="v2", status="failed",
        steps=[
            {"name": "shift 10% of alias live to version 4", "start": start, "stop": start + 2},
            *({"name": f"poll {i}/10: error_rate {v:.3f} on version 4",
               "status": "failed" if v > 0.05 else "passed", "start": t, "stop": t + 1}
              for i, (t, v) in enumerate(error_rate["v2 (4)"], start=1)),
            {"name": "rollback: alias live back to version 3", "start": start + 300,
             "attachments": [Attachment.json("rollback record", {"alias": "live", "from": "4", "to": "3"})]},
        ],
        attachments=[
            Attachment.yaml("effective policy", "stages:\n  shift10:\n    weight: 10%\n    bake: 5m\n"),
            Attachment.json("stage decision", decision),
            Attachment.png("error rate by version", plot_series(error_rate, 0.05, "error rate", "ratio")),
            Attachment.text("deploy command output", "deployed with postgresql://llama:pw-not-shown@db/x"),
        ],
        failure={"metric": "error_rate", "value": 0.092, "threshold": 0.05, "window": "5m", "version": "v2 (4)"},
        started=start, stopped=start + 301, versions={"blue": "v1 (3)", "green": "v2 (4)"},
    )
    write_environment(results, {"env": "sandbox", "stage": "shift10", "release": "v2",
                                "versions": {"blue": "v1 (3)", "green": "v2 (4)"}, "approver": "ci"})
    # a real gate test through allure-pytest, failing with the core's message shape
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(GATE_TEST)
    pytester.makepyfile(test_monitoring="from pytest_llamadeploy.reporting import threshold_message\n"
                        "def test_p95_latency(): pass\n"
                        "def test_error_rate():\n"
                        "    raise AssertionError(threshold_message(metric='error_rate', value=0.092,"
                        " threshold=0.05, window='5m', version='v2 (4)'))\n")
    pytester.runpytest_subprocess(f"--alluredir={results}", "-p", "no:cacheprovider").assert_outcomes(
        passed=1, failed=1)


@pytest.fixture
def served_report(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve tmp_path/report over http on 127.0.0.1 (a free port); stopped at teardown."""
    report = tmp_path / "report"
    report.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(report)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield report, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="llamadeploy-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,1000", "--virtual-time-budget=8000", *extra, url],
            capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False,
        )


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _test_id(report: Path, name: str) -> str:
    for path in (report / "data" / "test-results").glob("*.json"):
        if json.loads(path.read_text()).get("name") == name:
            return path.stem
    raise AssertionError(f"no test result named {name!r} in {report}")


def test_reviewer_sees_stage_failed_metric_and_plot(tmp_path: Path, pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    served_report: tuple[Path, str]) -> None:
    results = tmp_path / "allure-results"
    _failing_stage_results(results, pytester, monkeypatch)
    report, base = served_report
    assert main(["report", "--results", str(results), "--out", str(report),
                 "--history", str(tmp_path / "history.jsonl")]) == 0

    stage_id = _test_id(report, "[sandbox] shift10 v2: stage verdict")
    overview = _visible_text(_chromium(f"{base}/index.html#{stage_id}", "--dump-dom").stdout)
    assert "[sandbox] shift10 v2: stage verdict" in overview
    assert "Category: Threshold breached" in overview
    assert "threshold breached: error_rate = 0.092 > threshold 0.05 over 5m on version v2 (4)" in overview
    assert "rollback: alias live back to version 3" in overview
    assert "pw-not-shown" not in overview

    attachments = _visible_text(_chromium(f"{base}/index.html#{stage_id}/attachments", "--dump-dom").stdout)
    assert re.search(r"error rate by version image/png \d+ KiB", attachments), attachments[:2000]
    assert "stage decision application/json" in attachments
    # the plot the page links to is served and is a PNG
    stored = json.loads((report / "data" / "test-results" / f"{stage_id}.json").read_text())
    plot = next(a for a in _walk_attachments(stored) if a["name"] == "error rate by version")
    with urllib.request.urlopen(f"{base}/data/attachments/{plot['id']}{plot['ext']}", timeout=10) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"

    # the gate test that allure-pytest recorded sits under the same env/stage
    gate = json.loads((report / "data" / "test-results" / f"{_test_id(report, 'test_error_rate')}.json").read_text())
    assert {"name": "subSuite", "value": "monitoring"} in gate["labels"]
    assert gate["categories"][0]["name"] == "Threshold breached"

    ARTIFACTS.mkdir(exist_ok=True)
    for suffix, fragment in (("overview", ""), ("attachments", "/attachments")):
        shot = ARTIFACTS / f"report-stage-verdict-{suffix}.png"
        shot.unlink(missing_ok=True)
        _chromium(f"{base}/index.html#{stage_id}{fragment}", f"--screenshot={shot}")
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def _walk_attachments(node: dict) -> Iterator[dict]:
    for step in node.get("steps", []):
        if step.get("type") == "attachment":
            yield step.get("link", step)
        yield from _walk_attachments(step)
    yield from node.get("attachments", [])
