"""The report of a real sandbox run as a reviewer sees it: built with `llamadeploy report`, opened in headless Chromium.

The run's one bad release on the shared sandbox (``bad_release``,
tests/sandbox_fixtures.py, also read by test_watch_sandbox.py): its deploy
passes, then ``error_rate=0.3`` is injected into it mid-bake at shift10, so the
watch's CloudWatch trigger rolls back and the stage verdict carries the
trigger, its value and its threshold. The tests read the raw allure-results (labels, parameters, steps,
attachments, no secrets) and the HTML report in Chromium (screenshots kept
under artifacts/).
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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llamadeploy.cli import main
from pytest_llamadeploy.reporting.cli import TOOLS_DIR
from pytest_llamadeploy.sandbox.state import SandboxState
from tests.support.stagerun import BadReleaseRun

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium")
CHROMIUM_TIMEOUT_S = 90

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.xdist_group("sandbox-exclusive"),  # one bad release per module, on one worker
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed and could not be: run "
                                                "`bash scripts/install-report-tools.sh` (needs apt)"),
    pytest.mark.skipif(not (TOOLS_DIR / "node_modules" / "allure" / "cli.js").is_file(),
                       reason="Allure 3 CLI not installed: run `bash scripts/install-report-tools.sh`"),
]


class BadRelease:
    """The bad release's run (tests/support/stagerun.py) as its Allure results read."""

    def __init__(self, run: BadReleaseRun, state: SandboxState) -> None:
        self.run, self.release, self.results, self.state = run, run.release, run.results, state

    def output(self, stage: str) -> str:
        """The stage's output (``deploy`` or ``shift10``)."""
        return getattr(self.run, stage).text()

    def results_json(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in self.results.glob("*-result.json")]

    def verdict(self, stage: str) -> dict[str, Any]:
        name = f"[sandbox] {stage} {self.release}: stage verdict"
        found = [r for r in self.results_json() if r["name"] == name]
        assert len(found) == 1, f"{len(found)} results named {name!r}; output:\n{self.output(stage)[-3000:]}"
        return found[0]

    def attachment(self, result: dict[str, Any], name: str) -> Path:
        refs = [a for a in _all_attachments(result) if a["name"] == name]
        assert refs, f"no attachment {name!r} on {result['name']}: {[a['name'] for a in _all_attachments(result)]}"
        return self.results / refs[0]["source"]


def _all_attachments(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from node.get("attachments", [])
    for step in node.get("steps", []):
        yield from _all_attachments(step)


@pytest.fixture(name="bad")
def bad_release_results(bad_release: BadReleaseRun, sandbox: SandboxState) -> BadRelease:
    return BadRelease(bad_release, sandbox)


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




def test_gate_runs_write_the_stage_evidence_into_allure_results(bad: BadRelease) -> None:
    assert (bad.run.deploy.rc, bad.run.shift10.rc) == (0, 1), bad.output("shift10")[-4000:]
    verdict = bad.verdict("shift10")
    assert verdict["status"] == "failed"
    message = verdict["statusDetails"]["message"]
    assert message.startswith("rollback triggered: rollback trigger "), message
    labels = {(label["name"], label["value"]) for label in verdict["labels"]}
    assert {("epic", "sandbox"), ("feature", "shift10"), ("parentSuite", "sandbox"), ("suite", "shift10")} <= labels
    params = {p["name"]: p["value"] for p in verdict["parameters"]}
    assert params["release"] == bad.release and re.fullmatch(r"onchain-api=\d+, onchain-ws=\d+", params["versions"])

    # steps: the shift, each poll, the rollback (with its record attached)
    names = [s["name"] for s in verdict["steps"]]
    assert any(n.startswith("shift") or "10%" in n for n in names), names
    polls = [s for s in verdict["steps"] if s["name"].startswith("poll +")]
    assert polls and polls[0]["start"] <= polls[-1]["start"], names
    rollback = next(s for s in verdict["steps"] if s["name"].startswith("rollback: alias live back to onchain-api v"))
    assert [a["name"] for a in rollback["attachments"]] == ["rollback record"]
    assert {"reason"} <= {p["name"] for p in rollback["parameters"]}

    # the decision: the trigger that fired, with value above its threshold, and every metric's row
    decision = json.loads(bad.attachment(verdict, "stage decision").read_text())
    breach = decision["breach"]
    assert breach["rule"] in message and breach["value"] > breach["threshold"], breach
    rows = decision["metrics"]
    assert rows and all({"metric", "value", "threshold", "window", "version", "verdict"} <= set(r) for r in rows)
    assert any(r["metric"] == "lambda_error_rate" and r["version"].startswith("new v") for r in rows), rows
    assert decision["status"] == "rolled_back" and decision["versions"]["new"]

    # plots from the watch's series, the policy, the rollback record
    plot = bad.attachment(verdict, "onchain-api error rate by version")
    assert plot.read_bytes().startswith(b"\x89PNG")
    policy = bad.attachment(verdict, "effective policy").read_text()
    assert "rollback_triggers:" in policy and "lambda_error_rate:" in policy
    assert json.loads(bad.attachment(verdict, "rollback record").read_text())["ok"] is True

    # the deploy stage: its command output, redacted, on the deploy step
    deploy = bad.verdict("deploy")
    assert deploy["status"] == "passed"
    step = next(s for s in deploy["steps"] if s["name"].startswith("deploy command: "))
    assert [a["name"] for a in step["attachments"]] == ["deploy command output"]
    assert f"--release {bad.release}" in bad.attachment(deploy, "deploy command output").read_text()

    # gate tests recorded by allure-pytest: navigable by env/stage/suite, release unquoted
    gates = [r for r in bad.results_json() if "stage verdict" not in r["name"]]
    assert gates
    for gate in gates:
        names_ = {label["name"]: label["value"] for label in gate["labels"]}
        assert names_["epic"] == names_["parentSuite"] == "sandbox"
        assert names_["feature"] == names_["suite"] in ("deploy", "shift10")
        assert names_["story"] == names_["subSuite"] in ("health", "functional", "monitoring")
        assert {p["name"]: p["value"] for p in gate["parameters"]}["release"] == bad.release
    env = dict(line.split("=", 1) for line in (bad.results / "environment.properties").read_text().splitlines())
    assert env["stage"] == "shift10" and env["release"] == bad.release and env["status"] == "rolled_back"
    assert {"versions.old", "versions.new", "weights", "policy.sha256", "approver"} <= set(env)


def test_no_secret_lands_in_allure_results(bad: BadRelease) -> None:
    state = bad.state
    secrets = [p.read_text().strip() for p in [state.directory / "auth_secret"] if p.is_file()]
    for url in (state.postgres_dsn, state.redis_url):
        password = urllib.parse.urlsplit(url).password
        if password:
            secrets.append(password)
    files = [p for p in bad.results.iterdir() if p.is_file()]
    assert len(files) > 10
    leaks = []
    for path in files:
        body = path.read_bytes().decode("utf-8", "replace")
        leaks += [f"{path.name}: secret #{i}" for i, s in enumerate(secrets) if s and s in body]
        # the sandbox's bearer tokens are JWT-like (eyJ...); the functional suite holds one in a fixture
        leaks += [f"{path.name}: {m}" for m in re.findall(r"eyJ[A-Za-z0-9_-]{12}", body)]
        leaks += [f"{path.name}: {m}" for m in re.findall(r"(?i)bearer [A-Za-z0-9._-]{12}", body)]
    assert not leaks, leaks[:10]


def test_reviewer_sees_stage_failed_metric_and_plot(bad: BadRelease, tmp_path: Path,
                                                    served_report: tuple[Path, str]) -> None:
    report, base = served_report
    assert main(["report", "--results", str(bad.results), "--out", str(report), "--no-history"]) == 0
    title = f"[sandbox] shift10 {bad.release}: stage verdict"
    stage_id = _test_id(report, title)
    stored = json.loads((report / "data" / "test-results" / f"{stage_id}.json").read_text())
    message = bad.verdict("shift10")["statusDetails"]["message"]
    breach = json.loads(bad.attachment(bad.verdict("shift10"), "stage decision").read_text())["breach"]

    overview = _visible_text(_chromium(f"{base}/index.html#{stage_id}", "--dump-dom").stdout)
    assert title in overview
    # The watch names its source: CloudWatch (rollback triggered) or its own probes (probe failed).
    category = {"probe": "Probe failed"}.get(breach.get("kind", ""), "Rollback triggered")
    assert f"Category: {category}" in overview
    # the failed metric, its value and its threshold, as the watch wrote them
    assert f"rollback trigger {breach['rule']}" in overview
    assert re.search(r"must be <= [\d.]+%", overview), overview[:3000]
    assert message[:200] in overview, (message, overview[:3000])
    assert re.search(r"rollback: alias live back to onchain-api v\d+", overview)

    attachments = _visible_text(_chromium(f"{base}/index.html#{stage_id}/attachments", "--dump-dom").stdout)
    assert re.search(r"onchain-api error rate by version image/png [\d.]+ KiB", attachments), attachments[:2000]
    assert "stage decision application/json" in attachments
    plot = next(a for a in _walk_attachments(stored) if a["name"] == "onchain-api error rate by version")
    with urllib.request.urlopen(f"{base}/data/attachments/{plot['id']}{plot['ext']}", timeout=10) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"

    ARTIFACTS.mkdir(exist_ok=True)
    for suffix, fragment in (("overview", ""), ("attachments", "/attachments")):
        shot = ARTIFACTS / f"report-stage-verdict-{suffix}.png"
        shot.unlink(missing_ok=True)
        _chromium(f"{base}/index.html#{stage_id}{fragment}", f"--screenshot={shot}")
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    # the plot itself, as the report serves it
    shot = ARTIFACTS / "report-stage-verdict-plot.png"
    shot.unlink(missing_ok=True)
    _chromium(f"{base}/data/attachments/{plot['id']}{plot['ext']}", f"--screenshot={shot}")
    assert shot.read_bytes().startswith(b"\x89PNG")


def _walk_attachments(node: dict) -> Iterator[dict]:
    for step in node.get("steps", []):
        if step.get("type") == "attachment":
            yield step.get("link", step)
        yield from _walk_attachments(step)
    yield from node.get("attachments", [])
